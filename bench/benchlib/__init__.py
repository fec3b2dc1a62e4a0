"""Helpers shared by the benchmark scripts in ``bench/`` (each script is run by its path, so this folder is
on ``sys.path`` and this package is imported as ``benchlib``; no module here shadows the standard library).

Shared by every bench:

- :mod:`benchlib.procfs`: figures of a process from ``/proc`` (CPU seconds, RSS, PSS, children, listeners);
- :mod:`benchlib.stats`: the one percentile and rounding the reports use;
- :mod:`benchlib.results`: where result files go (``bench/results/<bench>.json``), the machine and command
  recorded with them.

The operator's scale benchmark (``bench/operator_scale.py``) is made of:

- :mod:`benchlib.audit`: the API server's audit log, requests counted by phase;
- :mod:`benchlib.sampler`: peak RSS and CPU of a process over a phase (a thread sampling ``/proc``);
- :mod:`benchlib.prometheus`: counters scraped from a Prometheus endpoint (``prometheus_client.parser``);
- :mod:`benchlib.watcher`: a watch on the CacheLinks of a namespace (when each was created, Ready, gone);
- :mod:`benchlib.operator_driver`: the stack, one count's phases (apply, Ready, settle, steady, delete);
- :mod:`benchlib.operator_report`: targets, growth, verdict and the summary table.
"""
