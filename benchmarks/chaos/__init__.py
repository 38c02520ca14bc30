"""The chaos runner: kitrelay's embedded topology under a steady load of scripted conversations while faults are
injected one after another (`kill -9` of workers and gateways, SIGTERM past the drain deadline, Redis and NATS
killed and restarted, turns sent during the outages, a client that drops and re-attaches). Every conversation, as
the client saw it and as the store keeps it, is compared with the same script run without faults.

    .venv/bin/python -m benchmarks.chaos            # = make chaos
    .venv/bin/python -m benchmarks.chaos --quick    # one round of each fault (what CI runs)

See benchmarks/README.md ("Chaos") for what each fault does and how a turn is judged.
"""
