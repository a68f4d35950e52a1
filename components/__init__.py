"""Plumbing a learner may skip: checkpoints and DCP, Hugging Face interop and tokenizer files,
distributed set-up, cluster signals and locks, memory planning, validation selection, progress
bars and reports. The method itself (model, losses, sampling, rollouts, the loop) is at the root."""
