"""Annotation readers (pami_lightning.data) on tiny VOC / ImageNet-XML / COCO / folder datasets written in the real formats."""

from __future__ import annotations

import contextlib
import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from pami_lightning.data import CocoDataset, DatasetError, FolderDataset, VOCDataset, collate, resolve_classes, segmentation_to_mask
from pami_lightning.metrics import PointingGame, boxes_to_mask


# ---------------------------------------------------------------- writers of the real formats
def write_image(path: Path, h: int, w: int, seed: int = 0) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def voc_xml(filename: str | None, w: int, h: int, objects: list[tuple]) -> str:
    """objects: (name, xmin, ymin, xmax, ymax[, difficult])"""
    objs = "".join(
        f"<object><name>{o[0]}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>{o[5] if len(o) > 5 else 0}</difficult>"
        f"<bndbox><xmin>{o[1]}</xmin><ymin>{o[2]}</ymin><xmax>{o[3]}</xmax><ymax>{o[4]}</ymax></bndbox></object>"
        for o in objects
    )
    fn = f"<filename>{filename}</filename>" if filename is not None else ""
    return f"<annotation><folder>VOC2007</folder>{fn}<size><width>{w}</width><height>{h}</height><depth>3</depth></size><segmented>0</segmented>{objs}</annotation>"


def make_voc(root: Path, images: dict[str, tuple[int, int, list[tuple]]], splits: dict[str, list[str]] | None = None) -> Path:
    """VOC layout: Annotations/<id>.xml, JPEGImages/<id>.jpg, ImageSets/Main/<split>.txt. images: id -> (H, W, objects)."""
    (root / "Annotations").mkdir(parents=True)
    for k, (i, (h, w, objects)) in enumerate(images.items()):
        (root / "Annotations" / f"{i}.xml").write_text(voc_xml(f"{i}.jpg", w, h, objects))
        write_image(root / "JPEGImages" / f"{i}.jpg", h, w, seed=k)
    for name, ids in (splits or {}).items():
        (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "Main" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


def make_coco(tmp_path: Path, images: list[dict], annotations: list[dict], categories: list[dict]) -> tuple[Path, Path]:
    img_dir = tmp_path / "images"
    for k, im in enumerate(images):
        write_image(img_dir / im["file_name"], im["height"], im["width"], seed=k)
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps({"info": {}, "images": images, "annotations": annotations, "categories": categories}))
    return ann, img_dir


def mask_of(h: int, w: int, *boxes: tuple[int, int, int, int]) -> torch.Tensor:
    """Hand-written expectation: rows r0..r1 and cols c0..c1 inclusive for each (r0, r1, c0, c1)."""
    m = torch.zeros(h, w, dtype=torch.bool)
    for r0, r1, c0, c1 in boxes:
        m[r0 : r1 + 1, c0 : c1 + 1] = True
    return m


# ---------------------------------------------------------------- VOC
def test_voc_box_is_one_based_inclusive(tmp_path):
    root = make_voc(tmp_path / "voc", {"000001": (6, 8, [("dog", 1, 1, 4, 3)])})
    ds = VOCDataset(root)
    assert len(ds) == 1 and ds.classes == ["dog"]
    item = ds[0]
    assert item["image"].shape == (3, 6, 8) and item["image"].dtype == torch.float32
    assert 0 <= item["image"].min() and item["image"].max() <= 1
    assert item["boxes"].tolist() == [[0.0, 0.0, 4.0, 3.0]] and item["boxes"].dtype == torch.float32
    # xmin=1..xmax=4, ymin=1..ymax=3: rows 0..2, cols 0..3
    assert torch.equal(item["mask"], mask_of(6, 8, (0, 2, 0, 3)))
    assert (item["label"], item["id"], item["index"], item["class_name"]) == (0, "000001", 0, "dog")
    assert item["path"].endswith("JPEGImages/000001.jpg")


def test_voc_last_pixel_and_several_objects_of_one_class(tmp_path):
    # Two dogs and a cat; the second dog ends on the last pixel (xmax = W, ymax = H).
    objs = [("dog", 2, 2, 3, 3), ("cat", 5, 1, 6, 2), ("dog", 7, 5, 8, 6)]
    ds = VOCDataset(make_voc(tmp_path / "voc", {"a": (6, 8, objs)}))
    assert ds.classes == ["cat", "dog"] and len(ds) == 2  # one item per class present, in label order
    cat, dog = ds[0], ds[1]
    assert (cat["label"], dog["label"]) == (0, 1) and cat["id"] == dog["id"] == "a"
    assert dog["boxes"].tolist() == [[1, 1, 3, 3], [6, 4, 8, 6]]
    assert torch.equal(dog["mask"], mask_of(6, 8, (1, 2, 1, 2), (4, 5, 6, 7)))
    assert torch.equal(cat["mask"], mask_of(6, 8, (0, 1, 4, 5)))


REAL_VOC_XML = """<annotation>
	<folder>VOC2007</folder>
	<filename>000009.jpg</filename>
	<source>
		<database>The VOC2007 Database</database>
	</source>
	<size>
		<width>8</width>
		<height>6</height>
		<depth>3</depth>
	</size>
	<segmented>0</segmented>
	<object>
		<name>person</name>
		<pose>Left</pose>
		<truncated>1</truncated>
		<difficult>0</difficult>
		<bndbox>
			<xmin>2</xmin>
			<ymin>1</ymin>
			<xmax>5</xmax>
			<ymax>6</ymax>
		</bndbox>
		<part>
			<name>head</name>
			<bndbox>
				<xmin>3</xmin>
				<ymin>1</ymin>
				<xmax>4</xmax>
				<ymax>2</ymax>
			</bndbox>
		</part>
	</object>
</annotation>
"""


def test_voc_real_file_layout_with_parts(tmp_path):
    # Indented as VOC's files are, with a person's <part> (its own <name> and <bndbox>), which is not an object.
    root = tmp_path / "VOC2007"
    (root / "Annotations").mkdir(parents=True)
    (root / "Annotations" / "000009.xml").write_text(REAL_VOC_XML)
    write_image(root / "JPEGImages" / "000009.jpg", 6, 8)
    ds = VOCDataset(root)
    assert ds.classes == ["person"] and len(ds) == 1
    assert ds[0]["boxes"].tolist() == [[1.0, 0.0, 5.0, 6.0]]
    assert torch.equal(ds[0]["mask"], mask_of(6, 8, (0, 5, 1, 4)))


def test_voc_difficult_objects(tmp_path):
    objs = [("dog", 1, 1, 2, 2), ("dog", 5, 5, 6, 6, 1), ("cat", 7, 1, 8, 2, 1)]  # a difficult dog, a cat only difficult
    root = make_voc(tmp_path / "voc", {"a": (6, 8, objs)})
    torchray = VOCDataset(root)  # default: TorchRay's rule
    assert [it["class_name"] for it in torchray] == ["dog"]  # the all-difficult cat gives no item
    assert torch.equal(torchray[0]["mask"], mask_of(6, 8, (0, 1, 0, 1), (4, 5, 4, 5)))  # the difficult dog stays in the mask
    drop = VOCDataset(root, difficult="drop")
    assert [it["class_name"] for it in drop] == ["dog"]
    assert torch.equal(drop[0]["mask"], mask_of(6, 8, (0, 1, 0, 1))) and len(drop[0]["boxes"]) == 1
    keep = VOCDataset(root, difficult="keep")
    assert [it["class_name"] for it in keep] == ["cat", "dog"]
    assert torchray.classes == drop.classes == ["cat", "dog"]  # classes do not depend on the difficult rule
    with pytest.raises(ValueError, match="difficult must be"):
        VOCDataset(root, difficult="yes")  # type: ignore[arg-type]


def test_voc_one_per_image_picks_the_largest_class(tmp_path):
    objs = [("cat", 1, 1, 4, 4), ("dog", 5, 1, 6, 2), ("dog", 5, 4, 8, 6)]  # cat 16 px, dog 4 + 12 = 16 px: a tie
    images = {"a": (6, 8, objs), "b": (6, 8, [("cat", 1, 1, 2, 2), ("dog", 3, 3, 8, 6)])}
    ds = VOCDataset(make_voc(tmp_path / "voc", images), one_per_image=True)
    assert [(it["id"], it["class_name"]) for it in ds] == [("a", "cat"), ("b", "dog")]  # tie: the smaller label
    assert ds.num_images == 2 and ds.labels == [0, 1]


def test_voc_split_file_and_resize(tmp_path):
    images = {"a": (6, 8, [("dog", 1, 1, 4, 3)]), "b": (10, 20, [("dog", 11, 1, 20, 5)]), "c": (6, 8, [("cat", 1, 1, 2, 2)])}
    root = make_voc(tmp_path / "voc", images, splits={"test": ["b", "a"]})
    ds = VOCDataset(root, split="test", size=(12, 10))
    assert [it["id"] for it in ds] == ["b", "a"] and ds.classes == ["dog"]  # split order; c not read
    b = ds[0]
    assert b["image"].shape == (3, 12, 10) and b["mask"].shape == (12, 10)
    # b: 10x20 (HxW) -> 12x10: x * 10/20, y * 12/10; the box [10, 0, 20, 5] -> [5, 0, 10, 6]
    assert b["boxes"].tolist() == [[5.0, 0.0, 10.0, 6.0]]
    assert torch.equal(b["mask"], mask_of(12, 10, (0, 5, 5, 9)))
    a = ds[1]  # 6x8 -> 12x10: the box [0, 0, 4, 3] -> [0, 0, 5, 6]
    assert a["boxes"].tolist() == [[0.0, 0.0, 5.0, 6.0]]
    # The box mask of the scaled boxes equals the original mask resized by nearest-exact.
    original = mask_of(6, 8, (0, 2, 0, 3))
    assert torch.equal(a["mask"], F.interpolate(original[None, None].float(), (12, 10), mode="nearest-exact")[0, 0].bool())
    # The image is the original resized (bilinear, antialias) and size=int is a square.
    orig = VOCDataset(root, split="test")[1]["image"]
    assert torch.allclose(a["image"], F.interpolate(orig[None], (12, 10), mode="bilinear", antialias=True)[0].clamp(0, 1))
    assert VOCDataset(root, split="test", size=7)[0]["image"].shape == (3, 7, 7)


def test_imagenet_flat_xml_folder(tmp_path):
    # ImageNet's validation boxes: a flat folder of XMLs, <filename> without extension, images elsewhere (in class folders).
    ann, img = tmp_path / "val_xml", tmp_path / "val"
    ann.mkdir()
    for k, (stem, wnid) in enumerate([("ILSVRC2012_val_00000001", "n01751748"), ("ILSVRC2012_val_00000002", "n09193705")]):
        (ann / f"{stem}.xml").write_text(voc_xml(stem, 8, 6, [(wnid, 2, 2, 5, 4), (wnid, 1, 1, 1, 1)]))
        write_image(img / wnid / f"{stem}.JPEG", 6, 8, seed=k)
    ds = VOCDataset(ann, images=img)
    assert ds.classes == ["n01751748", "n09193705"] and [it["id"] for it in ds] == ["ILSVRC2012_val_00000001", "ILSVRC2012_val_00000002"]
    it = ds[1]
    assert it["label"] == 1 and it["path"].endswith("n09193705/ILSVRC2012_val_00000002.JPEG")
    assert torch.equal(it["mask"], mask_of(6, 8, (1, 3, 1, 4), (0, 0, 0, 0)))
    # Images beside the XMLs, named by the XML stem (no <filename>)
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "x.xml").write_text(voc_xml(None, 8, 6, [("n1", 1, 1, 2, 2)]))
    write_image(flat / "x.png", 6, 8)
    assert VOCDataset(flat)[0]["path"].endswith("flat/x.png")


def test_voc_errors_are_one_line(tmp_path):
    def err(*args, **kwargs) -> str:
        with pytest.raises(DatasetError) as e:
            VOCDataset(*args, **kwargs)
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "no such folder" in err(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert "no .xml annotation files" in err(tmp_path / "empty")
    root = make_voc(tmp_path / "voc", {"a": (6, 8, [("dog", 1, 1, 4, 3)])})
    assert "split file not found" in err(root, split="test")
    (root / "Annotations" / "b.xml").write_text("<annotation><object>")
    assert "b.xml: not valid XML" in err(root)
    (root / "Annotations" / "b.xml").write_text(voc_xml("b.jpg", 8, 6, [("dog", 1, 1, 4, 3)]))
    assert "b.xml: image file <filename>b.jpg</filename> not found in" in err(root)
    write_image(root / "JPEGImages" / "b.jpg", 6, 8)
    (root / "Annotations" / "b.xml").write_text(voc_xml("b.jpg", 8, 6, [("dog", 4, 1, 2, 3)]))
    assert "b.xml: object 0 ('dog'): box xmin..xmax=4..2" in err(root)
    (root / "Annotations" / "b.xml").write_text("<annotation><object><name>dog</name></object></annotation>")
    assert "b.xml: object 0 ('dog') has no <bndbox>" in err(root)
    (root / "Annotations" / "b.xml").write_text(voc_xml("b.jpg", 8, 6, [("dog", "one", 1, 2, 3)]))
    assert "<xmin> is 'one', not a number" in err(root)
    (root / "Annotations" / "b.xml").write_text(voc_xml("b.jpg", 9, 6, [("dog", 1, 1, 2, 3)]))  # says 9 wide, image is 8
    with pytest.raises(DatasetError, match=r"b.jpg: the annotation says 9x6 \(WxH\) but the image is 8x6"):
        VOCDataset(root)[1]
    (root / "JPEGImages" / "b.jpg").write_bytes(b"not a jpeg")
    (root / "Annotations" / "b.xml").write_text(voc_xml("b.jpg", 8, 6, [("dog", 1, 1, 2, 3)]))
    with pytest.raises(DatasetError, match=r"b\.jpg: cannot read the image"):
        VOCDataset(root)[1]


# ---------------------------------------------------------------- classes
def test_classes_from_file_comma_list_sequence_and_default(tmp_path):
    root = make_voc(tmp_path / "voc", {"a": (6, 8, [("dog", 1, 1, 2, 2), ("cat", 3, 3, 4, 4)])})
    assert VOCDataset(root).classes == ["cat", "dog"]  # default: sorted
    f = tmp_path / "classes.txt"
    f.write_text("person\n dog \n\ncat\n")
    by_file = VOCDataset(root, classes=str(f))
    assert by_file.classes == ["person", "dog", "cat"] and by_file.labels == [1, 2]
    assert VOCDataset(root, classes=f).labels == [1, 2]  # a Path
    assert VOCDataset(root, classes="dog,cat").labels == [0, 1]
    assert VOCDataset(root, classes=["cat", "bird", "dog"]).labels == [0, 2]
    assert resolve_classes("traffic light", []) == ["traffic light"]  # one name, no comma
    with pytest.raises(DatasetError, match=r"classes file .*nope\.txt not found"):
        VOCDataset(root, classes=str(tmp_path / "nope.txt"))
    with pytest.raises(DatasetError, match="names 'dog' more than once"):
        resolve_classes("dog,cat,dog", [])
    with pytest.raises(DatasetError, match="no class names"):
        resolve_classes(" , ", [])


def test_unknown_classes_error_or_skip(tmp_path):
    root = make_voc(tmp_path / "voc", {"a": (6, 8, [("dog", 1, 1, 2, 2), ("cat", 3, 3, 4, 4), ("cat", 5, 5, 6, 6)]), "b": (6, 8, [("cat", 1, 1, 2, 2)])})
    with pytest.raises(DatasetError, match=r"annotations name 1 class\(es\) that classes 'dog,bird' lacks: 'cat' \(3\); give the model's full class list"):
        VOCDataset(root, classes="dog,bird")
    with pytest.warns(UserWarning, match=r"'cat' \(3\); their objects are skipped"):
        ds = VOCDataset(root, classes="dog,bird", unknown="skip")
    assert [(it["id"], it["class_name"]) for it in ds] == [("a", "dog")]  # b held only cats: no item
    with pytest.raises(ValueError, match="unknown must be"):
        VOCDataset(root, unknown="ignore")  # type: ignore[arg-type]


# ---------------------------------------------------------------- COCO
CATS = [{"id": 1, "name": "person", "supercategory": "x"}, {"id": 18, "name": "dog", "supercategory": "x"}, {"id": 90, "name": "cat", "supercategory": "x"}]


def coco_ann(i: int, image_id: int, cat: int, bbox: list[float], segmentation, iscrowd: int = 0, area: float | None = None) -> dict:
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, "segmentation": segmentation, "iscrowd": iscrowd, "area": area if area is not None else bbox[2] * bbox[3]}


def test_coco_boxes_polygons_and_noncontiguous_ids(tmp_path):
    images = [{"id": 42, "file_name": "b.png", "height": 6, "width": 8}, {"id": 7, "file_name": "a.png", "height": 6, "width": 8}]
    anns = [
        coco_ann(1, 7, 18, [2, 1, 4, 3], [[2, 1, 6, 1, 6, 4, 2, 4]]),  # a dog, rectangle polygon
        coco_ann(2, 7, 18, [0.75, 4.25, 1.5, 1.0], [[0, 4, 2, 4, 2, 6, 0, 6]]),  # a second dog
        coco_ann(3, 7, 90, [6, 0, 2, 2], [[6, 0, 8, 0, 8, 2, 6, 2]]),  # a cat
        coco_ann(4, 42, 1, [0, 0, 8, 6], [[0, 0, 8, 0, 8, 6, 0, 6]]),  # a person filling b
    ]
    ann, img = make_coco(tmp_path, images, anns, CATS)
    ds = CocoDataset(ann, img)
    assert ds.classes == ["cat", "dog", "person"] and ds.names_by_id == {1: "person", 18: "dog", 90: "cat"}
    assert [(it["id"], it["class_name"], it["label"]) for it in ds] == [("7", "cat", 0), ("7", "dog", 1), ("42", "person", 2)]  # image-id order
    dog = ds[1]
    assert dog["boxes"].tolist() == [[2.0, 1.0, 6.0, 4.0], [0.75, 4.25, 2.25, 5.25]]  # [x, y, w, h] -> xyxy
    assert torch.equal(dog["mask"], mask_of(6, 8, (1, 3, 2, 5), (4, 5, 0, 1)))  # the polygons, not the boxes
    assert torch.equal(ds[0]["mask"], mask_of(6, 8, (0, 1, 6, 7)))
    # mask_from="boxes": pixels whose centre lies in the box; [0.75, 2.25) x [4.25, 5.25) holds only (row 4, col 1)
    boxes = CocoDataset(ann, img, mask_from="boxes")[1]
    assert torch.equal(boxes["mask"], mask_of(6, 8, (1, 3, 2, 5), (4, 4, 1, 1)))
    # classes in category-id order, as a model trained on COCO's 80-class order
    by_id = CocoDataset(ann, img, classes=[ds.names_by_id[k] for k in sorted(ds.names_by_id)])
    assert by_id.labels == [1, 2, 0]


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools' COCO.annToMask under numpy 2
def test_coco_crowd_rle_and_compressed_rle(tmp_path):
    from pycocotools import coco as coco_api
    from pycocotools import mask as mask_api

    # Uncompressed RLE, column-major, starting with zeros: image 4x5, counts [5, 3, 12]:
    # 5 zeros (column 0, then row 0 of column 1), 3 ones (rows 1..3 of column 1), 12 zeros.
    crowd = {"size": [4, 5], "counts": [5, 3, 12]}
    expected_crowd = mask_of(4, 5, (1, 3, 1, 1))
    eye = np.asfortranarray(np.eye(4, 5, dtype=np.uint8))
    compressed = mask_api.encode(eye)
    compressed["counts"] = compressed["counts"].decode()  # as JSON stores it
    images = [{"id": 1, "file_name": "a.png", "height": 4, "width": 5}]
    anns = [
        coco_ann(1, 1, 1, [1, 1, 1, 3], crowd, iscrowd=1, area=3),
        coco_ann(2, 1, 1, [4, 0, 1, 1], [[4, 0, 5, 0, 5, 1, 4, 1]]),
        coco_ann(3, 1, 18, [0, 0, 4, 4], compressed, area=4),
    ]
    ann, img = make_coco(tmp_path, images, anns, CATS)
    ds = CocoDataset(ann, img)
    person, dog = ds[1], ds[0]
    assert person["class_name"] == "person" and dog["class_name"] == "dog"
    assert torch.equal(person["mask"], expected_crowd | mask_of(4, 5, (0, 0, 4, 4)))  # the crowd counts as the object
    assert torch.equal(dog["mask"], torch.from_numpy(eye.astype(bool)))
    # Same masks as pycocotools' COCO.annToMask (union per class)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = coco_api.COCO(str(ann))
    for it in ds:
        cat = {v: k for k, v in ds.names_by_id.items()}[it["class_name"]]
        ref = np.zeros((4, 5), bool)
        for a in coco.loadAnns(coco.getAnnIds(imgIds=[1], catIds=[cat])):
            ref |= coco.annToMask(a).astype(bool)
        assert torch.equal(it["mask"], torch.from_numpy(ref))
    # keep_crowd=False: the crowd is gone; a class that is only a crowd gives no item
    no_crowd = CocoDataset(ann, img, keep_crowd=False)
    assert torch.equal(no_crowd[1]["mask"], mask_of(4, 5, (0, 0, 4, 4))) and len(no_crowd[1]["boxes"]) == 1
    anns[1]["category_id"] = 90
    ann, img = make_coco(tmp_path, images, anns, CATS)
    assert [it["class_name"] for it in CocoDataset(ann, img, keep_crowd=False)] == ["cat", "dog"]
    # one_per_image: areas person 3 (crowd), cat 1, dog 4 -> dog
    assert [it["class_name"] for it in CocoDataset(ann, img, one_per_image=True)] == ["dog"]


def test_coco_resize_masks_nearest_and_degenerate_segmentations(tmp_path):
    images = [{"id": 1, "file_name": "sub/a.jpg", "height": 6, "width": 8}]
    anns = [coco_ann(1, 1, 18, [2, 1, 4, 3], [[2, 1, 6, 1, 6, 4, 2, 4]]), coco_ann(2, 1, 90, [0, 0, 2, 2], []), coco_ann(3, 1, 90, [4, 4, 2, 2], [[1, 1, 2, 2]])]
    ann, img = make_coco(tmp_path, images, anns, CATS)
    ds = CocoDataset(ann, img, size=(12, 4))
    cat, dog = ds[0], ds[1]
    assert dog["image"].shape == (3, 12, 4)
    assert dog["boxes"].tolist() == [[1.0, 2.0, 3.0, 8.0]]  # x * 4/8, y * 12/6
    original = mask_of(6, 8, (1, 3, 2, 5))
    assert torch.equal(dog["mask"], F.interpolate(original[None, None].float(), (12, 4), mode="nearest-exact")[0, 0].bool())
    assert torch.equal(dog["mask"], mask_of(12, 4, (2, 7, 1, 2)))
    # An empty segmentation or a polygon of two points: the box is the mask
    assert torch.equal(cat["mask"], mask_of(12, 4, (0, 3, 0, 0), (8, 11, 2, 2)))
    assert segmentation_to_mask([], 6, 8) is None


def test_coco_errors_are_one_line(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "height": 4, "width": 5}]
    good = [coco_ann(1, 1, 1, [0, 0, 2, 2], [[0, 0, 2, 0, 2, 2, 0, 2]])]

    def err(anns=good, imgs=images, cats=CATS, **kwargs) -> str:
        ann, img = make_coco(tmp_path, imgs, anns, cats)
        with pytest.raises(DatasetError) as e:
            CocoDataset(ann, img, **kwargs)
        assert "\n" not in str(e.value)
        return str(e.value)

    with pytest.raises(DatasetError, match=r"nope\.json: annotation file not found"):
        CocoDataset(tmp_path / "nope.json", tmp_path)
    with pytest.raises(DatasetError, match="no such image folder"):
        CocoDataset(tmp_path / "nope.json", tmp_path / "nope")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DatasetError, match=r"bad\.json: not valid JSON"):
        CocoDataset(tmp_path / "bad.json", tmp_path)
    (tmp_path / "bad.json").write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(DatasetError, match="no 'categories' list"):
        CocoDataset(tmp_path / "bad.json", tmp_path)
    assert "annotation 1 refers to category_id 5, which 'categories' lacks" in err([coco_ann(1, 1, 5, [0, 0, 1, 1], [])])
    assert "annotation 1 refers to image_id 9, which 'images' lacks" in err([coco_ann(1, 9, 1, [0, 0, 1, 1], [])])
    assert "annotation 1 lacks image_id, category_id or a bbox" in err([coco_ann(1, 1, 1, [0, 0, 1], [], area=1)])
    ann, img = make_coco(tmp_path, [*images, {"id": 2, "file_name": "b.png", "height": 4, "width": 5}], [*good, coco_ann(2, 2, 1, [0, 0, 1, 1], [])], CATS)
    (img / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"instances\.json: image 2's file 'b\.png' not found in"):
        CocoDataset(ann, img)
    assert "annotations name 1 class(es)" in err(classes="dog")
    # A crowd RLE of the wrong size: found when the item is read
    ann, img = make_coco(tmp_path, images, [coco_ann(7, 1, 1, [0, 0, 1, 1], {"size": [3, 3], "counts": [9]}, iscrowd=1)], CATS)
    with pytest.raises(DatasetError, match=r"instances.json: annotation 7: RLE size \[3, 3\] is not the image's"):
        CocoDataset(ann, img)[0]


def test_coco_without_pycocotools_says_what_to_install(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pycocotools(name, *args, **kwargs):
        if name.startswith("pycocotools"):
            raise ImportError("No module named 'pycocotools'")
        return real_import(name, *args, **kwargs)

    ann, img = make_coco(tmp_path, [{"id": 1, "file_name": "a.png", "height": 4, "width": 5}], [coco_ann(1, 1, 1, [0, 0, 2, 2], [])], CATS)
    monkeypatch.setattr(builtins, "__import__", no_pycocotools)
    with pytest.raises(ImportError, match="pip install pycocotools"):
        CocoDataset(ann, img)
    assert CocoDataset(ann, img, mask_from="boxes")[0]["mask"].sum() == 4  # box masks need no pycocotools


# ---------------------------------------------------------------- folder
def test_folder_dataset(tmp_path):
    write_image(tmp_path / "f" / "dog" / "2.png", 5, 6)
    write_image(tmp_path / "f" / "dog" / "1.jpg", 5, 6)
    write_image(tmp_path / "f" / "cat" / "x" / "3.png", 4, 4)
    (tmp_path / "f" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "f" / "empty").mkdir()
    ds = FolderDataset(tmp_path / "f", size=4)
    assert ds.classes == ["cat", "dog", "empty"]  # sorted sub-folders, as ImageFolder
    assert [(it["id"], it["label"]) for it in ds] == [("cat/x/3.png", 0), ("dog/1.jpg", 1), ("dog/2.png", 1)]
    it = ds[1]
    assert it["mask"] is None and it["boxes"].shape == (0, 4) and it["image"].shape == (3, 4, 4)
    batch = collate([ds[0], ds[1]])
    assert batch["mask"].shape == (2, 4, 4) and not batch["mask"].any()  # the pointing game skips them
    assert FolderDataset(tmp_path / "f", classes="bird,dog,cat").labels == [2, 1, 1]
    with pytest.raises(DatasetError, match="lacks: 'cat'"):
        FolderDataset(tmp_path / "f", classes="dog")
    with pytest.warns(UserWarning, match=r"'cat' \(1\)"):
        assert len(FolderDataset(tmp_path / "f", classes="dog", unknown="skip")) == 2
    with pytest.raises(DatasetError, match="no class sub-folders"):
        FolderDataset(tmp_path / "f" / "empty")
    with pytest.raises(DatasetError, match="no such folder"):
        FolderDataset(tmp_path / "nope")


def test_folder_reads_exact_pixels(tmp_path):
    pixels = write_image(tmp_path / "f" / "a" / "x.png", 3, 5)
    Image.fromarray(pixels[..., 0]).save(tmp_path / "f" / "a" / "y.png")  # greyscale -> RGB
    ds = FolderDataset(tmp_path / "f")
    assert torch.equal(ds[0]["image"], torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)
    assert torch.equal(ds[1]["image"], torch.from_numpy(pixels[..., 0]).float().div(255).expand(3, 3, 5))


# ---------------------------------------------------------------- collate, loaders, the pointing game
def test_collate_data_loader_and_pointing_game(tmp_path):
    images = {"a": (6, 8, [("dog", 1, 1, 4, 3), ("cat", 7, 5, 8, 6)]), "b": (10, 12, [("dog", 10, 8, 12, 10)])}
    ds = VOCDataset(make_voc(tmp_path / "voc", images), size=(6, 8))
    ds = pickle.loads(pickle.dumps(ds))  # data-loader workers get a pickled copy
    batch = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate)))
    assert batch["image"].shape == (3, 3, 6, 8) and batch["label"].tolist() == [0, 1, 1] and batch["index"].tolist() == [0, 1, 2]
    assert [b.shape[0] for b in batch["boxes"]] == [1, 1, 1] and batch["id"] == ["a", "a", "b"]
    assert torch.equal(batch["mask"][2], boxes_to_mask(batch["boxes"][2], (6, 8)))
    # Maps peaked inside each item's box hit; a map peaked elsewhere misses.
    maps = torch.zeros(3, 6, 8)
    maps[0, 5, 7] = maps[1, 1, 1] = maps[2, 0, 0] = 1  # cat at (5, 7) hit, dog (1, 1) hit, dog b at (0, 0) miss
    pg = PointingGame(tolerance=0)
    pg.update(maps, batch["mask"])
    assert pg.compute().item() == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match=r"images of different sizes .* give the dataset size="):
        collate([VOCDataset(tmp_path / "voc")[0], VOCDataset(tmp_path / "voc")[2]])
    with pytest.raises(IndexError):
        ds[3]
    assert repr(ds) == "VOCDataset(3 items from 2 images, 2 classes, size=(6, 8))"
    with pytest.raises(ValueError, match="size must be"):
        VOCDataset(tmp_path / "voc", size=(6, 8, 3))
