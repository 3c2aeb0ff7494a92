"""
The ``grok`` UI plugin: an "Images" tab on the task instance page, served from the API server behind
Airflow's own auth (``view`` decides what the page says; ``app`` serves it). Registered through the
``airflow.plugins`` entry point, so it loads with lazy provider discovery.
"""
