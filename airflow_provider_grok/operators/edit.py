"""GrokEditImagesOperator: edits of source images by Grok Imagine, stored in S3 as generations are."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from airflow_provider_grok.operators._params import PromptParams
from airflow_provider_grok.operators.generate import GrokGenerateImagesOperator

if TYPE_CHECKING:
    from airflow_provider_grok.hooks.grok import GrokHook
    from airflow_provider_grok.storage import S3ImageStore


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

    def prompt_params(self, hook: GrokHook, store: S3ImageStore) -> PromptParams:
        from airflow_provider_grok.operators._edits import pair_edits, resolve_sources
        from airflow_provider_grok.record.keys import fingerprint

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
        return PromptParams(params, request, prints, sources)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """The S3 sources as input datasets and the stored images as the output dataset."""
        from airflow.providers.common.compat.openlineage.facet import Dataset

        lineage = super().get_openlineage_facets_on_complete(task_instance)
        lineage.inputs = [Dataset(namespace=f"s3://{bucket}", name=key) for bucket, key in self._lineage_inputs]
        return lineage
