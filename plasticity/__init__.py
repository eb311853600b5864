"""plasticity: differentiable plasticity (Miconi, Clune & Stanley, ICML 2018) in PyTorch.

A plastic connection has a fixed weight `w` plus a Hebbian trace `Hebb` scaled by a
learned `alpha`; `Hebb` changes during an episode under a plasticity rule, and `w`,
`alpha` and `eta` are trained by backpropagation through whole episodes.

Packages, lowest first (each may import only those listed before it):

    errors, redact   one-line user errors; secrets kept out of messages
    cliargs          tyro parsing with one-line usage errors (every command's, the sweep's)
    rules            plasticity rules, one file each, and their registry
    config           one config per task, limits, presets, renames
    nn               plastic layers, the fused kernels, baselines, naive references
    models, agents   the networks the tasks train
    envs, data       the maze environment; CIFAR-10 and Omniglot in their standard layouts
    tasks            what each task draws and scores, and the model it builds
    train            the one training loop and its algorithms (episodic, A2C), checkpoints
    plugins          a user's own tasks, rules and search spaces, loaded by every command
    localray         edge: the private local Ray of the sweep and `serve` (127.0.0.1, own token)
    tracking, serving, cli   the edges: MLflow, serving a network that keeps learning, the CLI

The core (`rules`, `config`, `nn`, `tasks`, `train`) imports neither Ray nor MLflow.
Each package's docstring (each module's, for the modules above) says what it may import,
in lines tests/test_import_layers.py reads and enforces, with no import circle allowed;
`python benchmarks/import_graph.py` prints the graph.

May import: nothing
"""

__version__ = "0.1.0"
