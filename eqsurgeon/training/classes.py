"""Standard class names of the supported datasets, so tables and JSON say "wall", not "0".

The names and their order are the datasets' public label definitions, as MMSegmentation lists them
(``mmseg/datasets/ade.py``, ``cityscapes.py``, ``voc.py``, METAINFO ``classes``; ADE20K's "bed " lost its
trailing space). Index i is the training label i: ADE20K after ``reduce_zero_label`` (0 "other" ignored),
Cityscapes' trainIds, VOC's palette indices.
"""

from __future__ import annotations

from pathlib import Path

from eqsurgeon.errors import DataError
from eqsurgeon.training.config import DataConfig

# ADE20K, SceneParsing 150 classes (ADEChallengeData2016, objectInfo150).
ADE20K = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car",
    "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat",
    "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column",
    "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator",
    "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land",
    "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

# Cityscapes, the 19 evaluated classes in trainId order (cityscapesscripts' labels.py, trainId 0-18).
CITYSCAPES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip

# PASCAL VOC 2012, background + 20 object classes (the devkit's VOCopts.classes order).
VOC = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip

STANDARD: dict[str, tuple[str, ...]] = {"ade20k": ADE20K, "cityscapes": CITYSCAPES, "voc": VOC}


def class_names(fmt: str, num_classes: int, given: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The name of each class: the recipe's own list, else the dataset's standard one, else "0", "1", ...

    A standard list is used only when its length is ``num_classes``, so a recipe that relabels a dataset
    never gets names that do not belong to its labels.

    Args:
        fmt: the data layout that was read ("ade20k", "cityscapes", "voc", "folder", ...).
        num_classes: the recipe's ``data.num_classes``.
        given: the recipe's ``data.class_names``; used as far as it goes.

    >>> class_names("cityscapes", 19)[:3]
    ('road', 'sidewalk', 'building')
    >>> class_names("folder", 3, ("sky",))
    ('sky', '1', '2')
    """
    standard = STANDARD.get(fmt, ())
    base = given or (standard if len(standard) == num_classes else ())
    return tuple(base[i] if i < len(base) else str(i) for i in range(num_classes))


def recipe_class_names(data: DataConfig) -> tuple[str, ...]:
    """:func:`class_names` for a recipe's data table, detecting ``format = "auto"`` from its folder.

    >>> recipe_class_names(DataConfig(format="voc", num_classes=21))[20]
    'tvmonitor'
    """
    fmt = data.format
    if fmt == "auto" and data.root:
        from eqsurgeon.training.segmentation import detect_format

        try:
            fmt = detect_format(Path(data.root))
        except DataError:  # reading the data reports this properly; names fall back to numbers
            fmt = "folder"
    return class_names(fmt, data.num_classes, data.class_names)
