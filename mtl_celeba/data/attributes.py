"""CelebA's 40 binary attributes, in file order, with named presets."""

from __future__ import annotations

from collections.abc import Sequence

from mtl_celeba.errors import ConfigError, did_you_mean

#: The 40 attribute names exactly as they appear in ``list_attr_celeba.txt``, in column order.
CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald",
    "Bangs", "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair",
    "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard",
    "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings",
    "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip

#: Approximate positive rate of each attribute over the whole of CelebA.
CELEBA_POSITIVE_RATES: dict[str, float] = {
    "5_o_Clock_Shadow": 0.111, "Arched_Eyebrows": 0.267, "Attractive": 0.513,
    "Bags_Under_Eyes": 0.205, "Bald": 0.022, "Bangs": 0.152, "Big_Lips": 0.241,
    "Big_Nose": 0.235, "Black_Hair": 0.239, "Blond_Hair": 0.148, "Blurry": 0.051,
    "Brown_Hair": 0.205, "Bushy_Eyebrows": 0.142, "Chubby": 0.058, "Double_Chin": 0.047,
    "Eyeglasses": 0.065, "Goatee": 0.063, "Gray_Hair": 0.042, "Heavy_Makeup": 0.387,
    "High_Cheekbones": 0.455, "Male": 0.417, "Mouth_Slightly_Open": 0.483, "Mustache": 0.042,
    "Narrow_Eyes": 0.115, "No_Beard": 0.835, "Oval_Face": 0.284, "Pale_Skin": 0.043,
    "Pointy_Nose": 0.277, "Receding_Hairline": 0.08, "Rosy_Cheeks": 0.066, "Sideburns": 0.057,
    "Smiling": 0.482, "Straight_Hair": 0.208, "Wavy_Hair": 0.32, "Wearing_Earrings": 0.189,
    "Wearing_Hat": 0.048, "Wearing_Lipstick": 0.472, "Wearing_Necklace": 0.123,
    "Wearing_Necktie": 0.073, "Young": 0.774,
}  # fmt: skip

#: Named attribute sets; the Hydra group ``conf/attributes/`` mirrors these.
ATTRIBUTE_PRESETS: dict[str, tuple[str, ...]] = {
    "assignment8": (
        "Eyeglasses", "Male", "Mouth_Slightly_Open", "Smiling",
        "Wavy_Hair", "Young", "Arched_Eyebrows", "Blond_Hair",
    ),
    "heatmap8": (
        "Arched_Eyebrows", "Big_Lips", "Big_Nose", "Black_Hair",
        "Wearing_Earrings", "Wearing_Hat", "Wearing_Necklace", "Young",
    ),
    "all40": CELEBA_ATTRIBUTES,
}  # fmt: skip


def resolve_attributes(names: Sequence[str], key: str = "data.attributes") -> list[str]:
    """Check attribute names against CelebA's 40 and return them as a list, in the order given.

    Raises :class:`ConfigError` naming ``key`` with close-name suggestions for a typo,
    and for an empty or duplicated list.
    """
    names = [str(name) for name in names]
    if not names:
        raise ConfigError(f"{key} is empty: choose at least one of CelebA's 40 attributes.")
    for name in names:
        if name not in CELEBA_ATTRIBUTES:
            raise ConfigError(
                f"{key} has unknown attribute {name!r}.{did_you_mean(name, CELEBA_ATTRIBUTES, n=3)} "
                "The valid names are the 40 columns of list_attr_celeba.txt "
                "(see docs/data.md, 'Real CelebA')."
            )
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ConfigError(f"{key} lists {', '.join(duplicated)} more than once: list each once.")
    return names
