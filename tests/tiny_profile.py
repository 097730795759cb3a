"""A profile small enough for end-to-end tests of the runner: 2 models x 2 sizes x 1 seed, 4 steps
of batch 8, test sets of a few dozen digits (shared by the runner's tests)."""

TINY = """
models = ["capsnet", "convnet-maxpool"]
sizes = [20, 40]
seeds = [0]
targets = [0.2]
[data]
n_test = 24
affnist_k = 1
sweep_n = 8
rotation_grid = [-30, 0, 30]
scale_grid = [0.8, 1.0]
shear_grid = [0.0, 0.3]
translate_grid = [0, 6]
[model]
width = 0.0625
[train]
batch_size = 8
epochs = 1
min_steps = 4
max_steps = 4
val_size = 16
eval_every = 2
[throughput]
batch_sizes = [4]
warmup = 1
repeats = 1
"""
