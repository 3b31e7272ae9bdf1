"""A saga: book a trip in steps; if a later step fails for good, undo the earlier ones
(compensation) in reverse order, then report the failure."""

import coda


@coda.task(name="book_flight")
def book_flight(trip):
    return f"flight-{trip}"


@coda.task(name="book_hotel")
def book_hotel(trip):
    return f"hotel-{trip}"


@coda.task(name="book_car", retry=coda.RetryPolicy(maximum_attempts=2,
                                                   non_retryable_errors=["SoldOut"]))
def book_car(trip):
    if trip.startswith("peak"):
        raise SoldOut(f"no cars for {trip}")
    return f"car-{trip}"


@coda.task(name="cancel")
def cancel(booking):
    return f"cancelled {booking}"


class SoldOut(Exception):
    pass


@coda.workflow(name="book_trip")
async def book_trip(trip):
    done = []
    try:
        for step in (book_flight, book_hotel, book_car):
            done.append(await coda.context.spawn_task(step, args={"trip": trip}))
        return {"booked": done}
    except coda.TaskFailedError as failure:
        undone = [await coda.context.spawn_task(cancel, args={"booking": b})
                  for b in reversed(done)]
        return {"failed": failure.error_type, "compensated": undone}
