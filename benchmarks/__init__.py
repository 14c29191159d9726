"""The benchmark harness of dbt-pgtrickle (not part of the installed package).

Run everything with one command from the repository root::

    PYTHONPATH=. python -m benchmarks run --dsn "host=127.0.0.1 port=5432 user=postgres" \\
        --profile standard

See ``benchmarks/README.md`` and ``docs/BENCHMARK.md``.
"""
