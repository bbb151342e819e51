"""Rendering: figures from arrays (``figures``) and the static HTML report (``report``)."""
