# jax 0.10.2 CPU: jit(f) != f for plain jnp code
import jax, jax.numpy as jnp, numpy as np
c = jax.random.normal(jax.random.key(0), (33, 6))
T = jax.random.normal(jax.random.key(1), (198, 1, 6, 33))
def f(c, T):
    g = T.transpose(0, 1, 3, 2).reshape(198, 33, 6)
    h = jnp.broadcast_to(c, (198, 33, 6))
    return g - jnp.sum(jnp.exp(h) * g, -1, keepdims=True)
print(np.abs(jax.jit(f)(c, T) - f(c, T)).max())
