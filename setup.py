from setuptools import find_packages, setup

setup(
    name="o2o_jax",
    version="0.1.0",
    description="Offline-to-online RL (balanced replay + pessimistic Q-ensemble) in JAX/Flax",
    packages=find_packages(include=["o2o_jax", "o2o_jax.*", "experiments", "configs"]),
    # The shipped behaviour policies of the dataset recipe (experiments.ship_policy).
    package_data={"o2o_jax.data": ["policies/*/*.msgpack", "policies/*/*.json"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.4.30",
        "flax>=0.8",
        "optax",
        "chex",
        "gymnasium[mujoco]>=1.0",
        "mujoco>=3.1",
        "minari[hdf5]>=0.5",   # minari needs h5py to write or read any dataset
        "numpy",
        "ml-collections",
        "orbax-checkpoint",
        "absl-py",
        "matplotlib",          # experiments.plot: learning curves to PNG
    ],
    extras_require={
        # torch (CPU build) checks the rlkit importer against torch modules.
        "test": ["pytest", "pytest-xdist", "scipy", "nbclient", "nbformat", "ipykernel",
                 "tensorboard", "torch==2.13.0"],
        # Only for experiments.import_members: reading the Off2OnRL authors' .pt members.
        # Pinned: the CPU build; an unpinned torch pulls the multi-GB CUDA build.
        "reference": ["torch==2.13.0"],
        # Only for --config.tensorboard=True (and to view the event files).
        "tensorboard": ["tensorboard"],
    },
)
