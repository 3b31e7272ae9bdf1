import pytest

from harness import Cluster


@pytest.fixture
def make_cluster(tmp_path):
    """Factory for real clusters; every cluster made is killed at the end of the test."""
    made = []

    def make(**kwargs):
        cluster = Cluster(str(tmp_path / f"cluster{len(made)}"), **kwargs)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.close()
