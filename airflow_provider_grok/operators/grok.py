"""GrokGenerateImagesOperator and GrokEditImagesOperator: prompts (and source images) from DAG parameters,
generated or edited by Grok Imagine, stored in S3 exactly once.

DAG files import this module at parse time, many times a minute: it imports nothing heavy (no requests,
httpx, boto3 or PIL). The hook, the S3 store and the pipeline are imported when the task runs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator, BaseOperatorLink

from airflow_provider_grok.exceptions import GrokValidationError
from airflow_provider_grok.protocol.params import GENERATION_OPTIONS

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.sdk.types import TaskInstanceKey

    from airflow_provider_grok.hooks.grok import GrokHook
    from airflow_provider_grok.manifest import TaskIdentity
    from airflow_provider_grok.operators._pipeline import GenerationPipeline, RequestPlan
    from airflow_provider_grok.storage import S3ImageStore

# S3 bucket naming rules (also what MinIO, R2 and Ceph accept): 3-63 chars, lowercase, digits, dots, hyphens.
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# The generation parameters as the protocol declares them (one list; a light import: no HTTP library).
GENERATION_FIELDS = GENERATION_OPTIONS


def _default_deferrable() -> bool:
    from airflow.sdk.configuration import conf

    return conf.getboolean("operators", "default_deferrable", fallback=False)


class GrokManifestLink(BaseOperatorLink):
    """
    Link from the task in the Airflow UI to its images: the "Images" view of the ``grok`` UI plugin, served by
    the API server (so it works for private buckets and endpoints the browser cannot reach).

    The operator stores the URL in XCom under :attr:`xcom_key`. After ``execute`` the task runner calls
    :meth:`get_link` and stores its answer under that same key, which is where the API server reads it.
    """

    name = "Grok images"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        return XCom.get_value(key=self.xcom_key, ti_key=ti_key) or ""


class GrokGenerateImagesOperator(BaseOperator):
    """
    Generate images for one prompt or a list of prompts with Grok Imagine and store them in S3.

    Images land at ``s3://{s3_bucket}/{s3_key_prefix}/{prompt_index}-{image_index}.{ext}`` with a
    ``manifest.json`` beside them. The prefix is the same on every try of a task instance, so a retry
    reuses what is stored and pays only for what is missing; a prefix holding another run's work is refused
    before any request. Returns (XCom) one small dict per stored image: ``s3_uri``, ``bucket``, ``key``,
    ``content_type``, ``size_bytes``, ``sha256``, ``prompt``, ``revised_prompt``, ``model``,
    ``prompt_index``, ``image_index`` (a summary above ``max_xcom_images``).

    :param prompt: a prompt or a list of prompts (templated).
    :param s3_bucket: bucket to store the images in (templated).
    :param model: model name; default from the connection's ``model`` extra (templated).
    :param n: images per prompt, 1-100 (templated; more than 10 are requested 10 at a time).
    :param response_format: ``b64_json`` (default: images arrive inline, nothing depends on a temporary
        URL) or ``url`` (smaller responses; images are downloaded right away) (templated).
    :param aspect_ratio: e.g. ``16:9``, xAI and xAI-style gateways (templated).
    :param resolution: ``1k`` or ``2k``, xAI and xAI-style gateways (templated).
    :param size: ``1024x1024``, ``1536x1024`` or ``1024x1536``, OpenAI-style gateways (templated).
    :param quality: ``standard``/``hd`` (OpenAI-style gateways) or ``low``/``medium`` (xAI 2.0) (templated).
    :param user: end-user id passed to the gateway (templated).
    :param extra_body: further JSON fields for the gateway (templated).
    :param s3_key_prefix: key prefix (templated). Default ``grok/{dag_id}/{run_id}/{task_id}``. A mapped
        task always gets ``/map-{map_index}`` appended, so mapped instances never overwrite each other.
    :param grok_conn_id: the ``grok`` connection.
    :param aws_conn_id: the AWS connection for S3 (keys, role, region, ``endpoint_url`` all apply).
    :param max_concurrency: generation requests in flight at once (default 4).
    :param allow_partial: if True (default), a prompt that moderation refused entirely is recorded and the
        task still succeeds; if False it fails the task (after everything else is stored).
    :param skip_existing: if True (default), reuse the images an earlier try of this task instance stored.
    :param s3_extra_args: extra ``put_object`` arguments for every object, e.g. ``ServerSideEncryption``,
        ``SSEKMSKeyId``, ``StorageClass``, ``Tagging`` (templated).
    :param deferrable: wait for generation in the triggerer instead of a worker slot
        (default ``[operators] default_deferrable``).
    :param max_xcom_images: above this many stored images the XCom is a summary (``manifest_uri``,
        ``bucket``, ``prefix``, ``images``) instead of one dict per image, so a 10,000-prompt task does not
        put megabytes into the metadata DB; the manifest lists every image (default 1000).
    :param max_cost_usd: the most this task instance may be billed, all its tries together, in US dollars
        (templated). No request is sent that could take the bill past it: the first request (of one image)
        goes alone to learn the price, then the worst case of every request in flight is reserved. When the
        next request would pass the cap, sending stops, what arrived is stored, the manifest is written and
        the task fails with :class:`~airflow_provider_grok.exceptions.GrokBudgetExceededError`; a retry with
        a higher cap pays only for what is missing. Needs a gateway that reports cost (xAI does). Under a
        cap, a request that got no answer is not retried by the hook (it may have been billed): the try
        ends and an Airflow retry sends it again within the cap. Default None: no cap.
    """

    template_fields: Sequence[str] = (
        "prompt",
        *GENERATION_FIELDS,
        "s3_bucket",
        "s3_key_prefix",
        "s3_extra_args",
        "grok_conn_id",
        "aws_conn_id",
        "max_cost_usd",
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {
        "prompt": "json",
        "extra_body": "json",
        "s3_extra_args": "json",
    }
    operator_extra_links = (GrokManifestLink(),)
    ui_color = "#1f1f1f"
    ui_fgcolor = "#ffffff"

    def __init__(
        self,
        *,
        prompt: str | list[str],
        s3_bucket: str,
        model: str | None = None,
        n: int = 1,
        response_format: str = "b64_json",
        aspect_ratio: str | None = None,
        resolution: str | None = None,
        size: str | None = None,
        quality: str | None = None,
        user: str | None = None,
        extra_body: dict[str, Any] | None = None,
        s3_key_prefix: str | None = None,
        grok_conn_id: str = "grok_default",
        aws_conn_id: str | None = "aws_default",
        max_concurrency: int = 4,
        allow_partial: bool = True,
        skip_existing: bool = True,
        s3_extra_args: dict[str, Any] | None = None,
        deferrable: bool | None = None,
        max_xcom_images: int = 1000,
        max_cost_usd: float | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # Not templated, so checked now: a mistake shows up as a DAG import error, not at 3 a.m.
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or not 1 <= max_concurrency <= 64:
            raise ValueError(f"Invalid max_concurrency={max_concurrency!r}: expected an integer from 1 to 64.")
        if isinstance(max_xcom_images, bool) or not isinstance(max_xcom_images, int) or max_xcom_images < 0:
            raise ValueError(f"Invalid max_xcom_images={max_xcom_images!r}: expected an integer >= 0.")
        for name, flag in (("allow_partial", allow_partial), ("skip_existing", skip_existing)):
            if not isinstance(flag, bool):
                raise ValueError(f"Invalid {name}={flag!r}: expected True or False.")
        self.prompt = prompt
        self.s3_bucket = s3_bucket
        self.model = model
        self.n = n
        self.response_format = response_format
        self.aspect_ratio = aspect_ratio
        self.resolution = resolution
        self.size = size
        self.quality = quality
        self.user = user
        self.extra_body = extra_body
        self.s3_key_prefix = s3_key_prefix
        self.grok_conn_id = grok_conn_id
        self.aws_conn_id = aws_conn_id
        self.max_concurrency = max_concurrency
        self.allow_partial = allow_partial
        self.skip_existing = skip_existing
        self.s3_extra_args = s3_extra_args
        self.deferrable = _default_deferrable() if deferrable is None else deferrable
        self.max_xcom_images = max_xcom_images
        self.max_cost_usd = max_cost_usd
        self._pipeline: GenerationPipeline | None = None
        self._kill_requested = False
        self._stored_prefix: tuple[str, str] | None = None

    # --- validation ---

    def prompts(self) -> list[str]:
        """The rendered prompt(s) as a list, validated."""
        prompts = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        if not isinstance(prompts, list | tuple) or not prompts:
            raise GrokValidationError(
                f"Invalid prompt={self.prompt!r}: expected a non-empty string or a non-empty list of strings."
            )
        for index, text in enumerate(prompts):
            if not isinstance(text, str) or not text.strip():
                raise GrokValidationError(f"Invalid prompt[{index}]={text!r}: expected a non-empty string.")
        return list(prompts)

    def generation_request(self) -> dict[str, Any]:
        """The generation parameters the user set (rendered), ``n`` coerced from a rendered template string."""
        request = {name: getattr(self, name) for name in GENERATION_FIELDS if getattr(self, name) is not None}
        n = request.get("n", 1)
        if isinstance(n, str) and n.strip().isdigit():
            request["n"] = int(n)
        return request

    def storage_target(self, context: Context) -> tuple[str, str]:
        """(bucket, prefix) for this task instance, validated."""
        bucket = self.s3_bucket
        if not isinstance(bucket, str) or not _BUCKET_NAME.match(bucket):
            hint = " (give the bucket name only, without s3://)" if isinstance(bucket, str) and "/" in bucket else ""
            raise GrokValidationError(
                f"Invalid s3_bucket={bucket!r}: expected an S3 bucket name (3-63 lowercase letters, digits, dots, "
                f"hyphens){hint}."
            )
        ti = context["ti"]
        if self.s3_key_prefix is None:
            from airflow_provider_grok.manifest import default_prefix

            prefix = default_prefix(ti.dag_id, ti.run_id, ti.task_id)
        elif not isinstance(self.s3_key_prefix, str) or not self.s3_key_prefix.strip("/ "):
            raise GrokValidationError(
                f"Invalid s3_key_prefix={self.s3_key_prefix!r}: expected a non-empty key prefix such as "
                "'images/{{ ds }}', or None for the default."
            )
        else:
            prefix = self.s3_key_prefix.strip().strip("/")
        if ti.map_index is not None and ti.map_index >= 0:
            prefix = f"{prefix}/map-{ti.map_index}"
        return bucket, prefix

    def cost_cap(self) -> float | None:
        """The rendered ``max_cost_usd`` as a number of dollars, validated (None: no cap)."""
        value = self.max_cost_usd
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
            return None
        try:
            cap = float(value)
        except (TypeError, ValueError):
            cap = float("nan")
        if isinstance(value, bool) or not cap > 0 or cap == float("inf"):
            raise GrokValidationError(
                f"Invalid max_cost_usd={value!r}: expected a number of US dollars > 0 (e.g. 5 or '2.50'), or None "
                "for no cap."
            )
        return cap

    def s3_put_args(self) -> dict[str, Any]:
        from airflow_provider_grok.storage import ALLOWED_S3_EXTRA_ARGS

        args = self.s3_extra_args or {}
        if not isinstance(args, Mapping):
            raise GrokValidationError(f"Invalid s3_extra_args={args!r}: expected a dict of put_object arguments.")
        unknown = sorted(set(args) - ALLOWED_S3_EXTRA_ARGS)
        if unknown:
            raise GrokValidationError(
                f"Invalid s3_extra_args={dict(args)!r}: {', '.join(unknown)} not allowed; allowed are "
                f"{', '.join(sorted(ALLOWED_S3_EXTRA_ARGS))}."
            )
        return dict(args)

    # --- execution ---

    def build_pipeline(self, context: Context) -> GenerationPipeline:
        """
        Validate everything and fold what earlier tries (or the trigger) recorded under the prefix.
        Raises before any money is spent; a mistake no retry can fix fails the task without retries.
        """
        from airflow.sdk.exceptions import AirflowFailException

        from airflow_provider_grok.hooks.grok import GrokHook
        from airflow_provider_grok.operators._pipeline import GenerationPipeline
        from airflow_provider_grok.storage import S3ImageStore

        try:
            cap = self.cost_cap()
            # Under a cap, a request that may have been billed without an answer is not retried blindly.
            hook = GrokHook(self.grok_conn_id, max_connections=self.max_concurrency, retry_unanswered=cap is None)
            bucket, prefix = self.storage_target(context)
            store = S3ImageStore(self.aws_conn_id, bucket, prefix, self.s3_put_args())
            plan = self.plan_requests(hook, store)
        except GrokValidationError as err:
            raise AirflowFailException(str(err)) from err
        self._stored_prefix = (bucket, prefix)
        # Where the Images view finds this task instance's manifest (before anything is spent or stored).
        from airflow_provider_grok.plugins.view import LOCATION_XCOM_KEY

        context["ti"].xcom_push(
            key=LOCATION_XCOM_KEY, value={"bucket": bucket, "prefix": prefix, "aws_conn_id": self.aws_conn_id}
        )
        pipeline = GenerationPipeline(
            plan=plan,
            hook=hook,
            store=store,
            identity=self.identity(context),
            max_concurrency=self.max_concurrency,
            allow_partial=self.allow_partial,
            log=self.log,
            max_cost_usd=cap,
        )
        manifest = store.read_manifest()  # also the cheap check that the bucket exists and is readable
        try:
            pipeline.load_previous(manifest, reuse_images=self.skip_existing)
        except GrokValidationError as err:  # the prefix belongs to another run
            raise AirflowFailException(str(err)) from err
        self._pipeline = pipeline
        if self._kill_requested:  # on_kill arrived while we were getting ready
            pipeline.stop()
        return pipeline

    def plan_requests(self, hook: GrokHook, store: S3ImageStore) -> RequestPlan:
        """One validated generation request per prompt (the edit operator plans edits instead)."""
        from airflow_provider_grok.operators._pipeline import RequestPlan

        request = self.generation_request()
        params = [hook.build_params(prompt, **request) for prompt in self.prompts()]
        request["model"] = params[0].model
        return RequestPlan(params, request)

    @staticmethod
    def identity(context: Context) -> TaskIdentity:
        from airflow_provider_grok.manifest import TaskIdentity

        ti = context["ti"]
        map_index = -1 if ti.map_index is None else ti.map_index
        return TaskIdentity(ti.dag_id, ti.task_id, ti.run_id, map_index, ti.try_number)

    def execute(self, context: Context) -> list[dict[str, Any]] | dict[str, Any]:
        pipeline = self.build_pipeline(context)
        jobs = pipeline.pending_jobs("d" if self.deferrable else "s")
        # The folded manifest, written before any request: proves the bucket is writable before paying.
        pipeline.compact()
        if not jobs:
            self.log.info("Every image of this task instance is already stored: nothing to generate.")
            return self.finish(context, pipeline)
        if self.deferrable:
            from airflow_provider_grok.triggers.grok import GrokGenerateImagesTrigger

            self.log.info("Deferring %d generation requests to the triggerer.", len(jobs))
            store = pipeline.store
            self.defer(
                trigger=GrokGenerateImagesTrigger(
                    grok_conn_id=self.grok_conn_id,
                    aws_conn_id=self.aws_conn_id,
                    bucket=store.bucket,
                    prefix=store.prefix,
                    s3_extra_args=store.extra_args,
                    identity=asdict(pipeline.identity),
                    plan_key=pipeline.trigger_plan(jobs),
                    max_concurrency=self.max_concurrency,
                ),
                method_name="execute_complete",
                timeout=self.execution_timeout,
            )
        pipeline.run(jobs)
        return self.finish(context, pipeline)

    def execute_complete(
        self, context: Context, event: dict[str, Any] | None = None
    ) -> list[dict[str, Any]] | dict[str, Any]:
        """
        Resume after the trigger, which generated and stored the images and recorded each request in S3:
        fold those records into the manifest. Images lost in the narrow window of a triggerer crash (answer
        received, not yet stored) are generated here, and the log says so.
        """
        from airflow_provider_grok.exceptions import GrokBudgetExceededError
        from airflow_provider_grok.triggers.grok import GenerationEvent

        pipeline = self.build_pipeline(context)
        outcome = GenerationEvent.from_payload(event)
        if outcome.error is not None:
            pipeline.record_batch_failure(outcome.error)
            xcom, _ = pipeline.finalize()  # the manifest says what happened; the task fails with the error
            if isinstance(outcome.error, GrokBudgetExceededError):
                raise pipeline.budget_exceeded(len(xcom))  # names the spend and what was not generated
            raise outcome.error
        # Prompts with an error or an image that could not be stored fail as on the sync path; what remains
        # missing was paid for but lost in a triggerer crash between an answer and its storing.
        lost = [
            job
            for job in pipeline.pending_jobs("s")
            if pipeline.records[job.prompt_index].error is None and not pipeline.records[job.prompt_index].not_stored
        ]
        if lost:
            self.log.warning(
                "%d images were paid for in the triggerer but not stored (it was restarted while storing them); "
                "generating them here. The manifest counts both requests.",
                sum(job.count for job in lost),
            )
            pipeline.run(lost)
        return self.finish(context, pipeline)

    def finish(self, context: Context, pipeline: GenerationPipeline) -> list[dict[str, Any]] | dict[str, Any]:
        """Final manifest, UI link and asset events; then the XCom (or the summary error)."""
        self._persist_manifest_link(context, pipeline)
        xcom, manifest = pipeline.finish()
        self._emit_asset_events(context, pipeline, manifest)
        if len(xcom) > self.max_xcom_images:
            self.log.info(
                "%d images stored: returning a summary instead of one XCom entry per image (max_xcom_images=%d); "
                "the manifest lists every image.",
                len(xcom),
                self.max_xcom_images,
            )
            store = pipeline.store
            return {
                "manifest_uri": store.uri(store.manifest_key),
                "bucket": store.bucket,
                "prefix": store.prefix,
                "images": len(xcom),
            }
        return xcom

    def on_kill(self) -> None:
        """
        Start no further request. Requests in flight end with their answer (which is still stored) or their
        timeout; Airflow ends the process after its grace period anyway. The manifest records what was stored.
        """
        self._kill_requested = True
        if self._pipeline is not None:
            self._pipeline.stop()

    # --- Airflow integration: link, assets, lineage ---

    def _persist_manifest_link(self, context: Context, pipeline: GenerationPipeline) -> None:
        from urllib.parse import urlsplit

        from airflow.sdk.configuration import conf

        from airflow_provider_grok.plugins.view import view_path

        ti = context["ti"]
        map_index = -1 if ti.map_index is None else ti.map_index
        # Under the API server's own path when it is served below one (https://host/airflow).
        root = urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")
        url = root + view_path(ti.dag_id, ti.run_id, ti.task_id, map_index)
        ti.xcom_push(key=GrokManifestLink().xcom_key, value=url)

    def _emit_asset_events(self, context: Context, pipeline: GenerationPipeline, manifest: dict[str, Any]) -> None:
        from airflow.sdk import Asset, AssetAlias

        cost = manifest["cost"]
        extra = {
            "images": manifest["summary"]["images_stored"],
            "prompts": manifest["summary"]["prompts"],
            "status": manifest["status"],
            "manifest_uri": pipeline.store.uri(pipeline.store.manifest_key),
            "prefix_uri": pipeline.store.uri(pipeline.store.prefix + "/"),
            "run_id": manifest["run_id"],
            # This run's spend: every try of this task instance (None: a billed request reported no usage).
            "cost_usd": cost["usd"],
            "requests": cost["requests"],
            "requests_unanswered": cost["requests_unanswered"],
            "attempts_unanswered": cost["attempts_unanswered"],
        }
        for outlet in self.outlets or []:
            if isinstance(outlet, AssetAlias):
                context["outlet_events"][outlet].add(Asset(pipeline.store.uri(pipeline.store.prefix)), extra=extra)
            elif isinstance(outlet, Asset):
                context["outlet_events"][outlet].extra = extra

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """The stored images as one OpenLineage output dataset per task instance (namespace ``s3://bucket``)."""
        from airflow.providers.common.compat.openlineage.facet import Dataset
        from airflow.providers.openlineage.extractors import OperatorLineage

        if self._stored_prefix is None:
            return OperatorLineage()
        bucket, prefix = self._stored_prefix
        return OperatorLineage(outputs=[Dataset(namespace=f"s3://{bucket}", name=prefix)])


class GrokEditImagesOperator(GrokGenerateImagesOperator):
    """
    Edit images with Grok Imagine (xAI's JSON ``/v1/images/edits``) and store the results in S3, exactly like
    :class:`GrokGenerateImagesOperator` stores generations: same layout, manifest, exactly-once retries,
    deferrable mode, cost accounting, assets and lineage. The manifest records each edit's sources (URI,
    SHA-256, size); OpenLineage sees the S3 sources as inputs.

    What is edited, from ``prompt`` and ``source_images``:

    - **one prompt, many sources**: the prompt is applied to each source (restyle every image);
    - **several prompts, one source**: each prompt is applied to that source (variants);
    - **groups** (a list of lists): one edit per group, its sources named ``<IMAGE_0>``, ``<IMAGE_1>``... in
      the prompt (put a product into a scene); one prompt for every group, or one prompt per group;
    - as many prompts as sources (or groups): pairwise.

    :param source_images: (templated) ``s3://bucket/key`` URIs (read through the AWS connection and sent
        inline), http(s) URLs, ``data:image/...`` URIs, ``{"file_id": ...}``, or the XCom of
        :class:`GrokGenerateImagesOperator` (``source_images=generate.output`` just works, its summary form too).
    :param prompt: a prompt or a list of prompts (templated). See the shapes above.
    Every other parameter is :class:`GrokGenerateImagesOperator`'s, except ``size`` (edits take none).
    """

    template_fields: Sequence[str] = (*GrokGenerateImagesOperator.template_fields, "source_images")
    template_fields_renderers: ClassVar[dict[str, str]] = {
        **GrokGenerateImagesOperator.template_fields_renderers,
        "source_images": "json",
    }

    def __init__(self, *, source_images: Any, **kwargs: Any) -> None:
        if kwargs.get("size") is not None:
            raise ValueError("GrokEditImagesOperator takes no size: an edit keeps its source's shape.")
        super().__init__(**kwargs)
        self.source_images = source_images
        self._lineage_inputs: list[tuple[str, str]] = []

    def plan_requests(self, hook: GrokHook, store: S3ImageStore) -> RequestPlan:
        from airflow_provider_grok.manifest import fingerprint
        from airflow_provider_grok.operators._edits import pair_edits, resolve_sources
        from airflow_provider_grok.operators._pipeline import RequestPlan

        request = {k: v for k, v in self.generation_request().items() if k != "size"}
        edits = pair_edits(self.prompts(), resolve_sources(self.source_images, store))
        params, prints, sources = [], [], []
        for prompt, group in edits:
            params.append(hook.build_edit_params(prompt, [s.payload for s in group], **request))
            described = [s.describe() for s in group]
            prints.append(fingerprint(prompt, {**request, "sources": [d["sha256"] or d["uri"] for d in described]}))
            sources.append(described)
        self._lineage_inputs = sorted({s.s3_location for _, group in edits for s in group if s.s3_location})
        request["model"] = params[0].model
        return RequestPlan(params, request, prints, sources)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """The S3 sources as input datasets and the stored images as the output dataset."""
        from airflow.providers.common.compat.openlineage.facet import Dataset

        lineage = super().get_openlineage_facets_on_complete(task_instance)
        lineage.inputs = [Dataset(namespace=f"s3://{bucket}", name=key) for bucket, key in self._lineage_inputs]
        return lineage
