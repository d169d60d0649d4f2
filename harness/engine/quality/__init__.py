"""`bench quality`: training small models on synthetic long-range tasks (train, maps), and the
driver that runs those jobs in the executor's workers and writes quality.jsonl (runner)."""
