"""plasticity: differentiable plasticity (Miconi, Clune & Stanley, ICML 2018) in PyTorch.

A plastic connection has a fixed weight `w` plus a Hebbian trace `Hebb` scaled by a
learned `alpha`; `Hebb` changes during an episode under a plasticity rule, and `w`,
`alpha` and `eta` are trained by backpropagation through whole episodes.

Packages, lowest first (each may import only those listed before it):

    errors, redact   one-line user errors; secrets kept out of messages
    rules            plasticity rules, one file each, and their registry
    config           one config per task, limits, presets, renames
    nn               plastic layers, the fused kernels, baselines, naive references
    models, agents   the networks the tasks train
    envs, data       the maze environment; CIFAR-10 and Omniglot in their standard layouts
    tasks            what each task draws and scores, and the model it builds
    train            the one training loop and its algorithms (episodic, A2C), checkpoints
    localray         edge: the private local Ray of the sweep and `serve` (127.0.0.1, own token)
    tracking, serving, cli   the edges: MLflow, serving a network that keeps learning, the CLI

The core (`rules`, `config`, `nn`, `tasks`, `train`) imports neither Ray nor MLflow.
`python benchmarks/import_graph.py` prints the imports between the packages.
"""

__version__ = "0.1.0"
