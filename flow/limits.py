"""Every limit of Flow in one place (TigerBeetle's "put a limit on everything").

Names carry their unit last. The asserts at the bottom pin how limits relate; a change
that breaks a relation fails at import, not in production. Going over a limit answers
RESOURCE_EXHAUSTED (or INVALID_ARGUMENT for a malformed request), never a crash or a hang.
"""

KIB = 1024
MIB = 1024 * KIB

# --- identifiers -------------------------------------------------------------------------
# LMDB's compiled-in key size limit; ids end up inside composite keys (storage.keys), so
# the id limits are derived from it (history key: id NUL run_id NUL u64).
lmdb_key_bytes_max = 511
workflow_id_bytes_max = 400
type_name_bytes_max = 255
request_id_bytes_max = 128
run_id_bytes_max = 32  # the leader makes them: uuid4 hex

# --- payloads ----------------------------------------------------------------------------
# Args, results and state values (msgpack). Configurable per cluster up to the hard cap.
payload_bytes_default = 2 * MIB
payload_bytes_max = 8 * MIB
# A replicated command is a payload plus its envelope (ids, type names, stamps).
command_envelope_bytes_max = 16 * KIB
command_bytes_max = payload_bytes_max + command_envelope_bytes_max
# gRPC messages carry at most one command's worth of payload plus framing.
grpc_message_bytes_max = command_bytes_max + 64 * KIB
# RPCs a node serves at once; more are refused with RESOURCE_EXHAUSTED by gRPC itself.
grpc_concurrent_rpcs_max = 10_000

# --- shards and replication --------------------------------------------------------------
shards_max = 256
nodes_max = 7
# Proposals accepted by one shard leader and not yet answered; past this, RESOURCE_EXHAUSTED.
proposals_in_flight_max = 4000
# One Raft entry carries the proposals of one event-loop turn, up to these (flow.replica):
# bytes below pysyncobj's append batch (256 KiB) so a batch travels in one message.
proposal_batch_commands_max = 256
proposal_batch_bytes_max = 192 * KIB
# A leader replicates an entry's write set instead of its commands (flow.speculation)
# unless the write set is larger than this; then the commands go, and every replica runs them.
write_set_bytes_max = 384 * KIB
# A leader answers a batch of committed entries before their LMDB commit only if the
# batch has at most this many (flow.replica): alone, an entry's answer saves the commit's
# fdatasync (~0.5 ms a step); in the batches of a busy shard it saves little of the wait
# while every read of the batch's writes goes through the committed view (CPU, ~5 % of a
# W-seq workflow's: bench/bench_ab.py).
answer_early_batch_entries_max = 2
# A completion may take this many of what it queued straight to its supervisor (eager
# dispatch, flow.sm_supervisors): a workflow task spawning more leaves the rest queued.
eager_items_per_completion_max = 16
# A chained workflow task's TaskCompleted is stamped with its supervisor's clock: accepted
# within this much of the leader's (sm_supervisors.chained_wft_refusal).
chained_wft_clock_skew_ms = 1000
# The history a task's dispatch carries to the supervisor that ran its workflow's last
# workflow task (flow.dispatcher._with_run_history); more than this and it carries none.
task_history_events_max = 64
task_history_bytes_max = 64 * KIB
task_history_bytes_per_message_max = 1024 * KIB   # over all tasks of one dispatches message
# A `dispatches` message holds items up to this many bytes (one item more than this goes
# alone: an item fits a gRPC message by itself, inputs being payloads). Before, an assign
# of big items went as one message past the gRPC limit: the stream broke, the supervisor's
# hello re-queued them, and the next assign grouped them again.
dispatch_message_bytes_max = 4 * MIB
# The history tail a workflow task's dispatch carries; past it (or past what the gRPC
# message leaves beside the run's input), none: the supervisor fetches the history.
wft_history_tail_bytes_max = 2 * MIB
# Completions whose proposer gave up before their effects came, remembered so late
# effects take back the eager credit returned for them (flow.dispatcher.settle_eager).
eager_settled_remembered_max = 10_000
# A new run's first workflow task goes out before its start commits only from an entry
# of at most this many commands (flow.speculation), and while the shard has at most this
# many proposals in flight (flow.replica): a lone start gains the commit's latency; on a
# busy shard (W-seq's starts) early dispatches cost more CPU (a wake-up of the loop each,
# completions coming back one by one) than they gained (bench/bench_ab.py).
dispatch_early_batch_commands_max = 4
dispatch_early_proposals_in_flight_max = 8
# Starts whose first workflow task went out before they committed (flow.dispatcher,
# speculative dispatch), remembered until their commit; one that never commits ages out.
dispatched_early_remembered_max = 10_000
# pysyncobj's own command queue; kept above ours so ours is the one that answers.
raft_commands_queue_max = proposals_in_flight_max * 2
# How long a proposal may wait for its commit before the caller gets INDETERMINATE.
proposal_timeout_s = 10.0
# Reads waiting on one log barrier; more wait for the next barrier.
reads_per_barrier_max = 2000
reads_waiting_max = 20000

# --- idempotency -------------------------------------------------------------------------
# Results of mutating requests kept per shard so a retried request id gets the same answer.
request_dedup_entries_max = 200_000
request_dedup_window_ms = 24 * 3600 * 1000
# Expired dedup entries pruned per applied command (keeps apply O(1) amortised).
request_dedup_prune_per_command_max = 8

# --- listing -----------------------------------------------------------------------------
list_page_size_default = 100
list_page_size_max = 1000
# Records one shard scans for one page; a sparse filter returns a short page plus a token.
list_scan_records_max = 20_000
describe_pending_max = 1000        # open tasks and timers listed by DescribeWorkflow, each
page_token_bytes_max = 16 * KIB

# --- execution ---------------------------------------------------------------------------
# History of one run: events and encoded bytes. The cluster's settings (config
# history_events_per_run_max / history_bytes_per_run_max) go up to the hard caps; the
# leader stamps them into the commands that grow a history, so replicas agree. A run at
# its limit is failed at its next workflow task (HistoryLimitExceeded); from
# history_warning_percent of either, describe suggests continue-as-new.
history_events_per_run_default = 50_000
history_events_per_run_max = 200_000
history_events_per_run_min = 100
history_bytes_per_run_default = 64 * MIB
history_bytes_per_run_max = 1024 * MIB
history_bytes_per_run_min = 64 * KIB
history_warning_percent = 80
# Closed runs kept per workflow id (describe/history by run id); older ones are deleted
# with their history, tasks and state when another run closes.
closed_runs_per_workflow_max = 20
# Commands one workflow task may emit, and tasks a run may have open at once.
workflow_task_commands_max = 1000
open_tasks_per_run_max = 10_000
task_key_bytes_max = 64  # the runtime makes them: '#n' or 'c:' + hex digest
supervisor_id_bytes_max = 128
# A supervisor's build id (its code version): inside queue names of pinned runs.
build_id_bytes_max = 128
# Builds remembered per workflow type (the newest first-seen is where new runs go).
builds_per_type_max = 64
types_per_supervisor_max = 1000
# Items one assign / fire_timers / register command carries.
assign_items_max = 256
# Assign commands of one shard in flight at once (flow.dispatcher pipelines them).
assigns_in_flight_max = 8
timers_per_fire_max = 256
running_items_per_hello_max = 100_000
# A supervisor that sends nothing for this long is declared dead; its work is re-queued.
supervisor_lease_ms_default = 10_000
# Backoff of a failed workflow task (non-determinism, a worker crash): doubles per failure.
# A durable sleep (coda.context.sleep) may last up to ten years.
timer_delay_ms_max = 10 * 365 * 24 * 3600 * 1000
workflow_task_retry_initial_ms = 1000
workflow_task_retry_max_ms = 60_000
task_heartbeat_details_bytes_max = 64 * KIB
# Long polls for a workflow's result, and how many one shard leader holds open.
wait_workflow_ms_max = 60_000
workflow_waiters_max = 50_000
# Runs per supervisor session whose history the leader remembers having sent (so the next
# workflow task sends only new events); past it the oldest get their whole history again.
session_history_runs_max = 20_000
# Credit one supervisor session may hold (dispatches it can start without asking).
session_credit_max = 100_000
# Outbox entries (messages to other shards) one leader delivers per round.
outbox_batch_max = 256
# Messages of one supervisor session being committed at once; task heartbeats beyond it
# are dropped (the next carries the latest details; completions are bounded by credit).
session_pending_batches_max = 64
# Completions in one message from a supervisor.
completions_per_message_max = 1000
# --- schedules ---------------------------------------------------------------------------
# A schedule's run ids are '<schedule id>-<UTC ISO time>' (25 bytes), within workflow ids.
schedule_id_bytes_max = 200
schedules_per_shard_max = 10_000
# Nominal times one timer firing acts on (the rest: on the next firing, due at once).
schedule_times_per_fire_max = 64
schedule_backfill_times_max = 1000
# Runs of one schedule running at once (ALLOW_ALL), and times BUFFER_ALL holds.
schedule_running_max = 100
schedule_buffer_max = 1000
schedule_recent_actions_max = 20
schedules_page_size_max = 1000
# --- workflow state, signals, broadcast variables (flow/sm_state.py) ----------------------
# State keys live in LMDB keys beside the workflow and run ids, like task keys.
state_key_bytes_max = 64
state_keys_per_run_max = 1000
signal_name_bytes_max = 255
# Signals a run holds in history before it takes them: past it, RESOURCE_EXHAUSTED.
signals_per_run_max = 10_000
broadcast_name_bytes_max = 200
broadcasts_per_shard_max = 10_000
# Names one WatchBroadcasts stream follows, and streams one shard leader serves.
broadcast_watch_names_max = 10_000
broadcast_watchers_per_shard_max = 1000
# Updates queued for one watcher before it is cut off (it reconnects and re-reads).
broadcast_watch_queue_max = 10_000
history_page_size_default = 1000
history_page_size_max = 10_000
# A history page also stops at this many bytes of events (at least one event each): a
# page by count alone of big events passed gRPC's message limit, and a supervisor
# fetching such a history (a workflow task whose tail did not fit its dispatch) failed
# the workflow task on every retry.
history_page_bytes_max = 4 * MIB
# A ListWorkflows page (its items carry their results) stops at this many bytes, split
# over the shards' pages and cut again where they merge (at least one item a page).
list_page_bytes_max = 4 * MIB

assert workflow_id_bytes_max + 1 + run_id_bytes_max + 1 + 8 <= lmdb_key_bytes_max
assert len("task/") + type_name_bytes_max + 1 + 8 <= lmdb_key_bytes_max
assert len("wf/") + type_name_bytes_max + 1 + build_id_bytes_max + 1 + 8 <= lmdb_key_bytes_max
assert 8 + 1 + request_id_bytes_max <= lmdb_key_bytes_max
assert command_bytes_max > payload_bytes_max
assert grpc_message_bytes_max > command_bytes_max
assert raft_commands_queue_max > proposals_in_flight_max
assert reads_per_barrier_max <= reads_waiting_max
assert list_page_size_default <= list_page_size_max <= list_scan_records_max
assert payload_bytes_default <= payload_bytes_max
assert workflow_id_bytes_max + type_name_bytes_max + request_id_bytes_max < command_envelope_bytes_max
assert workflow_id_bytes_max + 1 + run_id_bytes_max + 1 + task_key_bytes_max <= lmdb_key_bytes_max
assert supervisor_id_bytes_max + 1 + 32 <= lmdb_key_bytes_max
assert history_events_per_run_min <= history_events_per_run_default <= history_events_per_run_max
assert history_bytes_per_run_min <= history_bytes_per_run_default <= history_bytes_per_run_max
assert 0 < history_warning_percent < 100
assert 8 + 1 + workflow_id_bytes_max + 1 + 32 <= lmdb_key_bytes_max  # timers
assert workflow_id_bytes_max + 1 + run_id_bytes_max + 1 + state_key_bytes_max <= lmdb_key_bytes_max
assert broadcast_name_bytes_max <= lmdb_key_bytes_max
assert schedule_id_bytes_max + len("-9999-12-31T23:59:59.999Z") <= workflow_id_bytes_max
