"""The ``grok`` AirflowPlugin (entry point ``airflow.plugins``): the Images view and its app."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from airflow_provider_grok.plugins.app import create_app
from airflow_provider_grok.plugins.view import URL_PREFIX


class GrokPlugin(AirflowPlugin):
    """
    The "Images" external view (a tab of every task instance, mapped ones too) and the app serving it. On by
    default; ``[grok] images_view = False`` (``AIRFLOW__GROK__IMAGES_VIEW=False``) turns both off.
    """

    name = "grok"

    @classmethod
    def on_load(cls, *args: object, **kwargs: object) -> None:
        from airflow.configuration import conf

        if conf.getboolean("grok", "images_view", fallback=True):
            cls.fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Grok Imagine images"}]
            cls.external_views = [
                {
                    "name": "Images",
                    "href": f"{URL_PREFIX}/images/{{DAG_ID}}/{{RUN_ID}}/{{TASK_ID}}/{{MAP_INDEX}}",
                    "destination": "task_instance",
                    "url_route": "grok-images",
                }
            ]
        else:
            cls.fastapi_apps, cls.external_views = [], []
