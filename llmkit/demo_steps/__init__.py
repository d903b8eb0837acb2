"""Demo steps of each job, registered with llmkit.demo.demo_step (one module per job)."""
