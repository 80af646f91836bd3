"""Datasets for zigma: procedural shapes (offline default) and captioned scenes, MNIST /
Fashion-MNIST from IDX files, image folders, videos (Moving-MNIST, moving shapes, clip
folders); transforms without torchvision; deterministic, resumable loaders; video samples out
(``video_io``: frame grids, GIFs, MP4).

Every item is ``{"image": float32 [C, H, W] in [-1, 1], "label": int64 scalar (-1 if
unlabelled), "caption": str}``.
"""

from zigma.data.cache import CachedItems
from zigma.data.captioned import CocoCaptions, MMCelebAHQ, read_coco_captions
from zigma.data.captions import pick_caption, read_caption_index, split_captions
from zigma.data.folder import (
    IMAGE_EXTENSIONS,
    IMAGE_FORMATS,
    DataLoadError,
    ImageFilesDataset,
    ImageFolderDataset,
    check_image,
)
from zigma.data.grid import make_image_grid, save_image_grid
from zigma.data.idx import (
    FASHION_MNIST_CAPTIONS,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DEBIAN_DIR,
    MNIST_CAPTIONS,
    MNIST_CLASSES,
    IdxDataset,
    IdxFormatError,
    fashion_mnist,
    mnist,
    parse_idx,
    read_idx,
    write_idx,
)
from zigma.data.latents import (
    LatentShardError,
    LatentShards,
    latent_shape,
    read_latent_index,
)
from zigma.data.loader import (
    CACHEABLE,
    DATASET_NAMES,
    FLIPPABLE,
    VIDEO_NAMES,
    DataConfig,
    SeededItems,
    build_dataset,
    collate_batch,
    iterate_batches,
    make_loader,
    seed_worker,
)
from zigma.data.sampler import EpochSampler, SkipSampler, derive_seed, epoch_permutation
from zigma.data.scenes import (
    SceneObject,
    ScenesDataset,
    SceneSpec,
    make_object,
    make_scene,
    random_scene,
    render_scene,
    scene_captions,
)
from zigma.data.shapes import ShapesDataset
from zigma.data.transforms import (
    ImageTransform,
    center_crop,
    hflip,
    random_crop,
    random_hflip,
    resize_shorter,
    to_channels,
    to_tensor,
    uint8_to_tensor,
)
from zigma.data.video import (
    VIDEO_EXTENSIONS,
    MovingMNIST,
    MovingShapes,
    VideoFolder,
    bounce,
    read_video_frames,
    video_decoder,
)
from zigma.data.video_io import (
    check_mp4_writer,
    make_frame_grid,
    save_frame_grid,
    save_gif,
    save_mp4,
)

__all__ = [
    "CACHEABLE",
    "CachedItems",
    "DATASET_NAMES",
    "FASHION_MNIST_CAPTIONS",
    "FLIPPABLE",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DEBIAN_DIR",
    "IMAGE_EXTENSIONS",
    "IMAGE_FORMATS",
    "MNIST_CAPTIONS",
    "MNIST_CLASSES",
    "VIDEO_EXTENSIONS",
    "VIDEO_NAMES",
    "CocoCaptions",
    "DataConfig",
    "DataLoadError",
    "EpochSampler",
    "IdxDataset",
    "IdxFormatError",
    "LatentShardError",
    "LatentShards",
    "ImageFilesDataset",
    "ImageFolderDataset",
    "MMCelebAHQ",
    "MovingMNIST",
    "MovingShapes",
    "ImageTransform",
    "SceneObject",
    "SceneSpec",
    "ScenesDataset",
    "SeededItems",
    "ShapesDataset",
    "SkipSampler",
    "VideoFolder",
    "bounce",
    "build_dataset",
    "center_crop",
    "check_image",
    "collate_batch",
    "derive_seed",
    "epoch_permutation",
    "fashion_mnist",
    "hflip",
    "iterate_batches",
    "latent_shape",
    "check_mp4_writer",
    "make_frame_grid",
    "make_image_grid",
    "save_frame_grid",
    "save_gif",
    "save_mp4",
    "make_loader",
    "make_object",
    "make_scene",
    "mnist",
    "parse_idx",
    "pick_caption",
    "random_crop",
    "random_hflip",
    "random_scene",
    "read_caption_index",
    "read_coco_captions",
    "read_idx",
    "read_latent_index",
    "read_video_frames",
    "render_scene",
    "resize_shorter",
    "save_image_grid",
    "scene_captions",
    "seed_worker",
    "split_captions",
    "to_channels",
    "to_tensor",
    "uint8_to_tensor",
    "video_decoder",
    "write_idx",
]
