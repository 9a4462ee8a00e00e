"""Published expert heads (JSON), installed as package data of headhunt_jax.checkpoints."""
