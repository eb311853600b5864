"""plasticity: differentiable plasticity (Miconi, Clune & Stanley, ICML 2018) in PyTorch.

A plastic connection has a fixed weight `w` plus a Hebbian trace `Hebb` scaled by a
learned `alpha`; `Hebb` changes during an episode under a plasticity rule, and `w`,
`alpha` and `eta` are trained by backpropagation through whole episodes.

The core (`rules`, `nn`, `tasks`, `train`) imports neither Ray nor MLflow.
"""

__version__ = "0.1.0"
