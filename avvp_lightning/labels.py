"""The 25 LLP event classes, in the official order (index = position)."""

CLASSES: tuple[str, ...] = (
    "Speech", "Car", "Cheering", "Dog", "Cat", "Frying_(food)", "Basketball_bounce",
    "Fire_alarm", "Chainsaw", "Cello", "Banjo", "Singing", "Chicken_rooster",
    "Violin_fiddle", "Vacuum_cleaner", "Baby_laughter", "Accordion", "Lawn_mower",
    "Motorcycle", "Helicopter", "Acoustic_guitar", "Telephone_bell_ringing",
    "Baby_cry_infant_cry", "Blender", "Clapping",
)
NUM_CLASSES: int = len(CLASSES)
NUM_SEGMENTS: int = 10  # LLP videos are 10 one-second segments
CLASS_INDEX: dict[str, int] = {name: i for i, name in enumerate(CLASSES)}
