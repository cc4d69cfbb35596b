"""The training machinery every task shares: recipes, the trainer, metrics logs."""
