"""
The record of exactly once, with no I/O (as h11 tests its state machine): each test lays out what S3 holds
after some step of the durable sequence, folds it as the next try would, and checks what is reused, what
is sent again and what the manifest says it cost. The whole file runs in a few milliseconds.
"""

from __future__ import annotations

import copy
import hashlib
import logging

import pytest

from airflow_provider_grok.exceptions import (
    GrokAuthError,
    GrokContentFilteredError,
    GrokCostCapExceededError,
    GrokIncompleteError,
    GrokPrefixInUseError,
    GrokServerError,
    GrokTransportError,
)
from airflow_provider_grok.protocol import EditParams, GeneratedImage, GenerationParams, ImageGenerationResult
from airflow_provider_grok.protocol.images import ImageType
from airflow_provider_grok.protocol.machine import ImageBytes
from airflow_provider_grok.record import (
    ANSWERED,
    FAILED,
    FILTERED,
    SENT,
    STORED,
    Admission,
    After,
    BatchDriver,
    CostCap,
    Finished,
    Job,
    Manifest,
    RequestRecord,
    Send,
    StopReason,
    TaskIdentity,
    TaskRecord,
    describe_cost,
    keys,
    lifecycle,
    manifest,
    report,
)
from airflow_provider_grok.record import plan as plans
from airflow_provider_grok.record.records import image_from_metadata, image_metadata
from airflow_provider_grok.storage.ledger import RequestLedger

pytestmark = pytest.mark.sansio

BUCKET, PREFIX = "b", "grok/d/r/t"
CENT = 10**8  # ticks: 10^10 ticks are one dollar
ME = TaskIdentity("d", "t", "r", -1, 1)
LOG = logging.getLogger("test_record")


class Crash(BaseException):
    """A SIGKILL at this instant: nothing after it runs (not an Exception: no handler catches it)."""


class Bucket:
    """
    What storage holds under the prefix: JSON documents, and image objects as (size, content type, metadata).
    It takes the writes of the real ``RequestLedger`` (the store interface), and can crash after the
    ``crash_after``-th durable write, recording the name of each write it took.
    """

    bucket, prefix = BUCKET, PREFIX

    def __init__(self, crash_after: int | None = None) -> None:
        self.documents: dict[str, dict] = {}
        self.images: dict[str, tuple[int, str, dict[str, str]]] = {}
        self.crash_after = crash_after
        self.writes: list[str] = []

    def _written(self, what: str) -> None:
        self.writes.append(what)
        if self.crash_after is not None and len(self.writes) >= self.crash_after:
            raise Crash(what)

    def uri(self, key: str) -> str:
        return f"s3://{BUCKET}/{key}"

    def put_json(self, key: str, document: dict) -> None:
        self.documents[key] = copy.deepcopy(document)
        self._written(f"{document['state']} receipt" if keys.is_receipt_key(PREFIX, key) else key)

    def put_image(self, key: str, data: bytes, content_type: str, metadata: dict, *, digest=None) -> str:
        self.images[key] = (len(data), content_type, {k: str(v) for k, v in metadata.items()})
        self._written("image")
        return key

    def listing(self) -> dict[str, int]:
        return {**{k: 100 for k in self.documents}, **{k: size for k, (size, _, _) in self.images.items()}}

    def receipts(self) -> list[dict]:
        return [doc for key, doc in self.documents.items() if keys.is_receipt_key(PREFIX, key)]

    def manifest(self) -> Manifest | None:
        return Manifest.read(self.documents.get(keys.manifest_key(PREFIX)))

    def write_receipt(self, identity: TaskIdentity, request: RequestRecord) -> None:
        self.documents[keys.receipt_key(PREFIX, request.id)] = request.receipt(identity)


def task(identity: TaskIdentity = ME, prompts=(("a cat", 2),), *, allow_partial=True, cap=None) -> TaskRecord:
    return TaskRecord(
        identity,
        [(text, keys.fingerprint(text, {"n": n}), n) for text, n in prompts],
        (BUCKET, PREFIX),
        "abc123",
        allow_partial=allow_partial,
        cap=CostCap(cap),
    )


def fold(bucket: Bucket, record: TaskRecord) -> TaskRecord:
    """What a try does first: fold the manifest, the receipts and the images (orphans by their metadata)."""
    manifest, listing = bucket.manifest(), bucket.listing()
    record.fold(manifest, bucket.receipts(), listing)
    orphans = {k: bucket.images[k] for k in record.orphan_keys(manifest, listing)}
    record.fold_images(manifest, listing, orphans)
    return record


def answer(count: int, *, returned: int | None = None, ticks_per_image: int | None = 2 * CENT, unanswered=0):
    returned = count if returned is None else returned
    usage = None if ticks_per_image is None else {"cost_in_usd_ticks": ticks_per_image * count}
    images = [GeneratedImage(i, b64_json="x", revised_prompt=f"revised {i}") for i in range(returned)]
    return ImageGenerationResult(0, "grok-imagine-image", images, count, usage, ["req-1"], 0, 0, unanswered)


PNG = ImageBytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 8, ImageType("image/png", "png"))


def ledger(bucket: Bucket, identity: TaskIdentity = ME) -> RequestLedger:
    """The real ledger (the executors' writes) over the in-memory bucket; every image fetches as a PNG."""
    return RequestLedger(bucket, identity, lambda image: PNG, logging.getLogger("test"))  # type: ignore[arg-type]


def store_image(bucket: Bucket, identity: TaskIdentity, request: RequestRecord, index: int, revised: str | None):
    """One image of an ``answered`` request in storage, as the ledger writes it."""
    key = keys.image_key(PREFIX, request.prompt_index, index, "png")
    facts = lifecycle.ObjectFacts(bucket.uri(key), BUCKET, key, "image/png", 7, "f0")
    image = lifecycle.stored_image(request, index, revised, "a cat", facts)
    metadata = {k: str(v) for k, v in image_metadata(identity, image, request.fingerprint, request.id).items()}
    bucket.images[key] = (7, "image/png", metadata)
    lifecycle.add_stored(request, image)


def stored(document: dict) -> dict:
    """A manifest document as storage would hold it: a snapshot, its lazily converted lists made plain."""
    return copy.deepcopy({k: list(v) if isinstance(v, manifest.JsonItems) else v for k, v in document.items()})


# The writes of one request of two images and the end of its try, as the ledger makes them (checked below).
STEPS = ["sent receipt", "answered receipt", "image 0", "image 1", "stored receipt", "manifest", "receipts deleted"]


def run_until(bucket: Bucket, record: TaskRecord, steps: int | None, result: ImageGenerationResult) -> None:
    """
    Run the first job of ``record`` as an executor does, through the real driver and ledger, then end the
    try (manifest, receipts deleted); a SIGKILL right after the ``steps``-th write (None: no crash).
    """
    if steps == 0:
        return
    bucket.crash_after = steps
    job = record.pending_jobs(keys.WORKER)[0]
    params = GenerationParams(prompt="a cat", model="m", n=job.count)
    driver = BatchDriver([(job, params)], record.cap, record.identity.try_number, LOG)
    try:
        send = driver.next()
        assert isinstance(send, Send)
        ledger(bucket, record.identity).write_sent(send.request)
        driver.sent(send.request)
        record.track(send.request)
        assert driver.answered(send.request, result, None) is After.STORE
        ledger(bucket, record.identity).store_answer(send.request, result, "a cat")
        driver.finished(send.request)
        record.apply(send.request)
        record.end_batch(driver.stop)
        record.decide()
        bucket.put_json(keys.manifest_key(PREFIX), stored(manifest.document(record, "x", {}, "")))
        for key in [k for k in bucket.documents if keys.is_bookkeeping_key(PREFIX, k)]:
            del bucket.documents[key]
        bucket._written("receipts deleted")
    except Crash:
        pass
    finally:
        bucket.crash_after = None


def test_the_ledger_makes_the_lifecycles_durable_writes_in_order() -> None:
    bucket = Bucket()
    run_until(bucket, task(), None, answer(2))
    # sent, answered, one write per image, stored: lifecycle.DURABLE_WRITES, then the end of the try.
    per_request = ["sent receipt", "answered receipt", "image", "image", "stored receipt"]
    assert [w for w in lifecycle.DURABLE_WRITES] == list(dict.fromkeys(per_request))
    assert bucket.writes == [*per_request, keys.manifest_key(PREFIX), "receipts deleted"]


@pytest.mark.parametrize(
    ("steps", "reused", "resent_images", "unanswered", "billed"),
    [
        (0, 0, 2, 0, 0),  # nothing written: nothing was sent
        (1, 0, 2, 1, 0),  # sent, no answer seen: may have been billed, and the images are owed again
        (2, 0, 2, 0, 1),  # answered (billed, on record), no image stored: both generated again
        (3, 1, 1, 0, 1),  # one image stored before its receipt said so: adopted from its metadata
        (4, 2, 0, 0, 1),  # both stored, receipt still "answered": both adopted, nothing paid again
        (5, 2, 0, 0, 1),
        (6, 2, 0, 0, 1),
        (7, 2, 0, 0, 1),  # the manifest alone holds the record once the receipts are deleted
    ],
    ids=["before anything", *(f"after {s}" for s in STEPS)],
)
def test_a_crash_at_each_step_repeats_only_what_was_not_stored(steps, reused, resent_images, unanswered, billed):
    bucket = Bucket()
    run_until(bucket, task(), steps, answer(2))
    assert len(bucket.writes) == steps
    retry = fold(bucket, task(TaskIdentity("d", "t", "r", -1, 2)))
    assert retry.reused == reused
    assert sum(job.count for job in retry.pending_jobs(keys.WORKER)) == resent_images
    cost = manifest.document(retry, "in_progress", {}, "now")["cost"]
    assert (cost["requests_unanswered"], cost["requests_billed"]) == (unanswered, billed)
    assert cost["usd"] == (0.04 if billed else 0.0)
    assert cost["this_try"]["requests"] == 0 and cost["by_try"].get("1", {"requests": 0})["requests"] == min(steps, 1)


def test_an_adopted_orphan_keeps_its_revised_prompt_and_model() -> None:
    bucket = Bucket()
    run_until(bucket, task(), 3, answer(2))
    retry = fold(bucket, task(TaskIdentity("d", "t", "r", -1, 2)))
    (image,) = retry.prompts[0].images
    assert (image.key, image.revised_prompt, image.model, image.sha256) == (
        f"{PREFIX}/0-0.png",
        "revised 0",
        "grok-imagine-image",
        hashlib.sha256(PNG).hexdigest(),
    )
    assert retry.pending_jobs(keys.WORKER)[0].first_image_index == 1  # the next image, not the adopted one


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda m: m.update({"run-id": "another run"}), id="another run"),
        pytest.param(lambda m: m.update({"map-index": "3"}), id="another map index"),
        pytest.param(lambda m: m.update({"fingerprint": "another prompt"}), id="another prompt or parameters"),
        pytest.param(lambda m: m.pop("sha256"), id="no checksum"),
        pytest.param(lambda m: m.clear(), id="not written by the provider"),
        pytest.param(lambda m: m.update({"prompt-index": "9"}), id="beyond today's prompts"),
    ],
)
def test_an_orphan_that_is_not_ours_is_left_alone(spoil) -> None:
    bucket = Bucket()
    run_until(bucket, task(), 3, answer(2))
    spoil(bucket.images[f"{PREFIX}/0-0.png"][2])
    retry = fold(bucket, task(TaskIdentity("d", "t", "r", -1, 2)))
    assert retry.reused == 0 and not retry.prompts[0].images


def test_an_image_replaced_or_deleted_since_is_generated_again() -> None:
    bucket = Bucket()
    run_until(bucket, task(), 7, answer(2))
    del bucket.images[f"{PREFIX}/0-0.png"]
    bucket.images[f"{PREFIX}/0-1.png"] = (999, "image/png", {})  # overwritten by something else
    retry = fold(bucket, task(TaskIdentity("d", "t", "r", -1, 2)))
    assert retry.reused == 0 and sum(j.count for j in retry.pending_jobs(keys.WORKER)) == 2


def test_a_changed_prompt_reuses_nothing() -> None:
    bucket = Bucket()
    run_until(bucket, task(), 7, answer(2))
    retry = fold(bucket, task(TaskIdentity("d", "t", "r", -1, 2), prompts=(("a dog", 2),)))
    assert retry.reused == 0 and sum(j.count for j in retry.pending_jobs(keys.WORKER)) == 2


def test_skip_existing_false_folds_the_cost_but_reuses_no_image() -> None:
    bucket = Bucket()
    run_until(bucket, task(), 7, answer(2))
    retry = task(TaskIdentity("d", "t", "r", -1, 2))
    retry.fold(bucket.manifest(), bucket.receipts(), bucket.listing())  # no fold_images: reuse_images=False
    assert sum(j.count for j in retry.pending_jobs(keys.WORKER)) == 2
    assert manifest.document(retry, "x", {}, "now")["cost"]["usd"] == 0.04


@pytest.mark.parametrize("where", ["manifest", "receipt"])
@pytest.mark.parametrize("field", ["dag_id", "task_id", "run_id", "map_index"])
def test_a_record_of_another_task_instance_is_refused_before_anything_is_sent(where, field) -> None:
    bucket = Bucket()
    other = TaskIdentity(**{**ME.__dict__, field: 7 if field == "map_index" else "other"})
    run_until(bucket, task(other), 7 if where == "manifest" else 2, answer(2))
    with pytest.raises(GrokPrefixInUseError, match=f"names .*{field} ") as raised:
        fold(bucket, task())
    assert "Nothing was generated" in str(raised.value) and f"s3://{BUCKET}/{PREFIX}/" in str(raised.value)


def test_a_manifest_of_another_version_or_malformed_is_not_read() -> None:
    assert Manifest.read({"manifest_version": 1, "requests": []}) is None
    assert Manifest.read(None) is None and Manifest.read(["not", "a", "manifest"]) is None
    assert Manifest.read({"manifest_version": 2, "prompts": [{"prompt": "no index"}]}) is None
    read = Manifest.read({"manifest_version": 2})
    assert read is not None and read.prompts == [] and read.images() == [] and read.status == "unknown"


def test_a_stale_receipt_never_takes_a_request_back() -> None:
    bucket = Bucket()
    run_until(bucket, task(), 6, answer(2))  # the manifest says stored...
    stale = RequestRecord.from_json(bucket.receipts()[0])
    stale.state, stale.images = SENT, []
    bucket.write_receipt(ME, stale)  # ...and a late "sent" receipt is found beside it
    retry = fold(bucket, task(TaskIdentity("d", "t", "r", -1, 2)))
    assert [r.state for r in retry.requests.values()] == [STORED]
    assert retry.reused == 2


# --- moderation ---


def test_moderation_removing_some_images_is_partial_and_not_asked_again() -> None:
    bucket = Bucket()
    run_until(bucket, task(), 5, answer(2, returned=1))
    first = fold(bucket, task())
    assert first.prompts[0].filtered == 1 and first.decide() == "partial"
    retry = fold(bucket, task(TaskIdentity("d", "t", "r", -1, 2)))
    assert retry.pending_jobs(keys.WORKER) == []  # moderation said no: asking again would pay again


@pytest.mark.parametrize(("allow_partial", "status"), [(True, "partial"), (False, "failed")])
def test_moderation_refusing_every_image(allow_partial, status) -> None:
    record = task(allow_partial=allow_partial)
    (job,) = record.pending_jobs(keys.WORKER)
    request = job.record(1)
    err = GrokContentFilteredError("refused by moderation", status=400, request_id="req-9")
    assert lifecycle.conclude(request, err, None) is After.WRITE_RECEIPT
    assert (request.state, request.billed, request.filtered, request.request_ids) == (FILTERED, True, 2, ["req-9"])
    record.track(request)
    record.apply(request)
    assert record.decide() == status and record.prompts[0].status == ("filtered" if allow_partial else "failed")
    error = report.outcome_error(record)
    assert (error is None) == allow_partial
    bucket = Bucket()
    bucket.write_receipt(ME, request)
    retry = fold(bucket, task(TaskIdentity("d", "t", "r", -1, 2), allow_partial=allow_partial))
    # Moderation's "no" is an answer: asked again only when the user said a prompt without images fails.
    assert sum(job.count for job in retry.pending_jobs(keys.WORKER)) == (0 if allow_partial else 2)
    # The prompt's record says why it has no images, in the manifest too.
    assert record.prompts[0].error == "content moderation refused every image: refused by moderation"
    if not allow_partial:
        assert isinstance(error, GrokIncompleteError) and "content moderation refused every image" in str(error)


# --- errors and what may have been billed ---


@pytest.mark.parametrize(
    ("err", "step", "maybe_billed"),
    [
        (GrokTransportError("read timed out"), After.WRITE_RECEIPT, True),
        (GrokServerError("boom", status=500), After.WRITE_RECEIPT, False),
        (GrokAuthError("bad key", status=401), After.WRITE_RECEIPT, False),
    ],
)
def test_a_failed_request_says_whether_it_may_have_been_billed(err, step, maybe_billed) -> None:
    request = Job("t1-abc123-s00001", 0, 0, 2, "fp").record(1)
    assert lifecycle.conclude(request, err, None) is step
    assert request.state == FAILED and request.maybe_billed is maybe_billed
    assert request.billed is (None if maybe_billed else False)


def test_every_attempt_that_got_no_answer_is_counted() -> None:
    """billed <= usd + the worst case of what the manifest names unanswered, with the hook's retries too."""
    record = task(prompts=(("a cat", 1), ("a dog", 1), ("a cow", 1)))
    jobs = record.pending_jobs(keys.WORKER)
    timed_out = GrokTransportError("timed out")
    timed_out.unanswered_attempts = 1  # the hook retried once before its last attempt timed out too
    outcomes = [answer(1, unanswered=2), timed_out, None]
    for job, outcome in zip(jobs, outcomes, strict=True):
        request = job.record(1)
        record.track(request)
        if outcome is not None:  # the third stays "sent": in flight at a crash
            lifecycle.conclude(request, outcome, None)
    cost = manifest.document(record, "x", {}, "now")["cost"]
    assert cost["usd"] == 0.02
    assert cost["requests_unanswered"] == 2  # the timed-out request and the one in flight
    assert cost["attempts_unanswered"] == 3  # two retried attempts of the first request, one of the second
    assert "2 unanswered requests" in describe_cost(cost) and "3 retried attempts that got no answer" in describe_cost(
        cost
    )


def test_cost_is_told_per_try_and_for_all_tries() -> None:
    bucket = Bucket()
    run_until(bucket, task(), 3, answer(2))  # try 1: paid for 2, stored 1, then crashed
    second = fold(bucket, task(TaskIdentity("d", "t", "r", -1, 2)))
    (job,) = second.pending_jobs(keys.WORKER)
    request = job.record(2)
    second.track(request)
    lifecycle.conclude(request, answer(1, ticks_per_image=3 * CENT), None)
    cost = manifest.document(second, "x", {}, "now")["cost"]
    assert (cost["usd"], cost["this_try"]["usd"], cost["by_try"]["1"]["usd"]) == (0.07, 0.03, 0.04)
    assert cost["requests"] == 2 and cost["this_try"]["requests"] == 1
    assert job.id.startswith("t2-abc123-s")


def test_a_request_without_usage_makes_the_cost_unknown() -> None:
    record = task()
    (job,) = record.pending_jobs(keys.WORKER)
    request = job.record(1)
    record.track(request)
    lifecycle.conclude(request, answer(2, ticks_per_image=None), None)
    cost = manifest.document(record, "x", {}, "now")["cost"]
    assert cost["usd"] is None and cost["requests_without_usage"] == 1


def test_extra_images_beyond_the_request_are_not_stored() -> None:
    request = Job("t1-abc123-s00001", 0, 4, 2, "fp").record(1)
    result = answer(3)
    assert lifecycle.conclude(request, result, None) is After.STORE
    assert [index for index, _ in lifecycle.images_to_store(request, result)] == [4, 5]
    assert request.revised_prompts == ["revised 0", "revised 1"]


# --- the money cap, folded with the record ---


def test_a_cap_makes_the_first_request_a_probe_of_one_image() -> None:
    record = task(prompts=(("a cat", 10),), cap=1.0)
    assert [job.count for job in record.pending_jobs(keys.WORKER)] == [1, 9]
    assert [job.count for job in task(prompts=(("a cat", 10),)).pending_jobs(keys.WORKER)] == [10]


def test_a_cap_starts_from_what_earlier_tries_paid() -> None:
    bucket = Bucket()
    run_until(bucket, task(), 7, answer(2))
    retry = fold(bucket, task(TaskIdentity("d", "t", "r", -1, 2), prompts=(("a cat", 2), ("a dog", 10)), cap=0.10))
    assert retry.cap.spent_ticks == 4 * CENT and retry.cap.price_ticks == 2 * CENT
    assert not retry.cap.needs_probe  # the price is known from try 1
    job = retry.pending_jobs(keys.WORKER)[0]
    assert (job.prompt_index, job.count) == (1, 10)  # the price is known: no probe
    assert retry.cap.admit(3) is Admission.SEND  # 0.04 + 3 x 0.02 = 0.10: fits exactly
    request = Job("t2-abc123-s00002", 1, 0, 3, retry.prompts[1].fingerprint).record(2)
    lifecycle.conclude(request, answer(3), None)
    retry.track(request)
    retry.cap.release(request)
    rest = Job("t2-abc123-s00003", 1, 3, 1, retry.prompts[1].fingerprint)
    driver = BatchDriver([(rest, GenerationParams(prompt="a dog", model="m", n=1))], retry.cap, 2, LOG)
    assert driver.next() is Finished  # 0.12 would pass the cap, and nothing is in flight
    assert driver.stop is not None and driver.stop.reason is StopReason.COST_CAP
    retry.end_batch(driver.stop)
    retry.decide()
    error = report.outcome_error(retry)
    assert isinstance(error, GrokCostCapExceededError) and error.not_generated == [1]
    assert error.spent_usd == pytest.approx(0.10)


# --- the deferred batch ---


def plan(n: int = 3) -> list[tuple[Job, GenerationParams]]:
    params = GenerationParams(prompt="a cat", model="m", n=1, response_format="b64_json")
    return [(Job(keys.request_id(1, "abc123", keys.TRIGGER, i), 0, i, 1, "fp"), params) for i in range(n)]


def test_a_restarted_trigger_sends_only_what_was_in_flight_under_a_new_id() -> None:
    jobs = plan(3)
    answered = {**jobs[0][0].record(1).to_json(), "state": ANSWERED}
    in_flight = jobs[1][0].record(1).to_json()
    todo = plans.still_to_send(jobs, [answered, in_flight])
    assert [job.id for job, _ in todo] == ["t1-abc123-d00001-r1", "t1-abc123-d00002"]
    again = plans.still_to_send(jobs, [answered, in_flight, {**in_flight, "id": todo[0][0].id}])
    assert [job.id for job, _ in again] == ["t1-abc123-d00001-r2", "t1-abc123-d00002"]
    folded = plans.receipts_of_plan(jobs, [answered, in_flight, {**in_flight, "id": todo[0][0].id}, {"id": "x"}])
    assert len(folded) == 3  # the re-sent request is this plan's too; a stranger's is not


def test_a_plan_survives_its_round_trip() -> None:
    edit = EditParams(prompt="restyle", model="m", n=2, response_format="b64_json", sources=({"url": "s"},))
    jobs = [*plan(1), (Job("t1-abc123-d00009", 1, 0, 2, "fp2"), edit)]
    cap = CostCap(1.0)
    cap.fold([RequestRecord("x", 1, 0, 0, 1, "fp", state=STORED, usage={"cost_in_usd_ticks": CENT})])
    back, cap_back = plans.read_plan_document(plans.plan_document(jobs, cap))
    assert back == jobs and cap_back.to_json() == cap.to_json()


def test_images_lost_in_a_triggerer_crash_are_generated_by_the_worker() -> None:
    record = task(prompts=(("a cat", 2), ("a dog", 2), ("a cow", 2)))
    jobs = record.pending_jobs(keys.TRIGGER)
    failed = jobs[1].record(1)
    lifecycle.conclude(failed, GrokServerError("boom", status=500), None)
    record.track(failed)
    record.apply(failed)
    assert [job.prompt_index for job in record.lost_in_trigger(keys.WORKER)] == [0, 2]  # the error explains prompt 1


# --- names ---


def test_request_ids_and_keys() -> None:
    rid = keys.request_id(3, "abc123", keys.TRIGGER, 7)
    assert rid == "t3-abc123-d00007" and keys.planned_id(keys.resent_id(rid, 2)) == rid == keys.planned_id(rid)
    assert keys.is_receipt_key(PREFIX, keys.receipt_key(PREFIX, rid))
    assert keys.parse_image_key(PREFIX, keys.image_key(PREFIX, 4, 11, "webp")) == (4, 11)
    assert keys.parse_image_key(PREFIX, f"{PREFIX}/sub/4-11.png") is None
    assert (
        keys.default_prefix("d", "manual__2026-01-01T00:00:00+00:00", "t")
        == "grok/d/manual__2026-01-01T00_00_00_00_00/t"
    )
    assert keys.is_bookkeeping_key(PREFIX, keys.plan_key(PREFIX, "abc123"))


def test_image_metadata_is_read_back_as_written() -> None:
    request = Job("t1-abc123-s00001", 2, 0, 1, "fp").record(1)
    request.model = "grok-imagine-image"
    facts = lifecycle.ObjectFacts("s3://b/k", BUCKET, "k", "image/jpeg", 1, "ab")
    image = lifecycle.stored_image(request, 5, None, "p", facts)
    written = {k: str(v) for k, v in image_metadata(ME, image, "fp", request.id).items()}  # S3 returns strings
    found = image_from_metadata(written)
    assert found is not None and ME.foreign_owner(found.owner) is None
    assert (found.try_number, found.request_id, found.fingerprint) == (1, request.id, "fp")
    assert (found.prompt_index, found.image_index, found.model, found.sha256) == (2, 5, "grok-imagine-image", "ab")


def test_receipts_folded_one_at_a_time_still_refuse_a_foreign_one() -> None:
    bucket = Bucket()
    run_until(bucket, task(), 2, answer(2))  # our own receipt
    theirs = Bucket()
    run_until(theirs, task(TaskIdentity(**{**ME.__dict__, "run_id": "other"})), 2, answer(2))
    receipts = iter([*bucket.documents.values(), *theirs.documents.values()])  # the foreign one comes last
    with pytest.raises(GrokPrefixInUseError, match=r"a request receipt names .*run_id 'other'"):
        task().fold(None, receipts, [])
