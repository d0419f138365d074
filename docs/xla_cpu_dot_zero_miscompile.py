# jax 0.10.2 CPU: a dot against a broadcast zero constant reads uninitialized memory (XLA
# CPU's YNN dot fusion; right with XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=).
# jaxops never materializes a zero tangent into a dot (docs/design.md, "Symbolic zeros").
import jax
import jax.numpy as jnp

a = jax.random.normal(jax.random.key(0), (64, 32))
for _ in range(3):  # leave garbage in freed buffers for the dot to read
    jax.block_until_ready(jax.jit(lambda a: jnp.exp(a @ a.T) * 1e20)(a))
print(jax.jit(lambda a: jnp.sum(a @ jnp.zeros((32, 128)), axis=1))(a).max())  # want 0.0
