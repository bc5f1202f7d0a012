"""What every system shares, and that imports no system: errors, atomic io, record readers, chat and tokenisation,
the backbone factory, generation backends, pooling and heads, checkpoint rules, strategies, the shard cache, HF
export, the optimiser helper and the loss functions that several systems use."""
