"""The embedded default dataset: a seeded synthetic product catalogue with users who shop like people do.

``recalign data synth --out DIR`` writes ``items.csv`` (item, title, description, brand, category) and
``interactions.csv`` (user, item, timestamp in Unix seconds), the two files of the ``csv`` source format, so
``recalign data prepare --format csv --source DIR`` turns them into a canonical dataset like any other.

The generative story, chosen so that both a collaborative-filtering model and an LLM reading titles have real
signal to learn, and so that neither finds it trivial:

* **Catalogue.** Ten latent departments (Cameras, Audio, Kitchen, Camping, Gaming, Office, Toys, Hair Care,
  Fitness, Dogs). Each has *main* product types (a mirrorless camera, an espresso machine) and *accessory*
  types, each accessory fitting some of the main types (a zoom lens fits mirrorless cameras, a memory card
  fits mirrorless and action cameras). Each department has four obviously fictional brands with two product
  lines each. An item is brand + line + model code + type + attributes, e.g. ``"Lumora ProShot P24
  Mirrorless Camera, 24MP, Black"``, with a one-sentence description (an accessory's names the main types it
  is made for), its brand and a category path such as ``"Electronics > Cameras"``. Departments differ in
  popularity and size; item popularity within one is Zipf-like, with a floor so that every item survives a
  5-core filter. About ``duplicate_rate`` of the items are re-listings that share the title of another item
  of the same line, and a few items carry a title that is a prefix of another item's (``"... Mirrorless
  Camera"`` next to ``"... Mirrorless Camera, 24MP, Black"``), because real catalogues have both and
  downstream code must cope. All other titles are unique.
* **Users.** A taste over departments concentrated on one to three of them (plus a little curiosity for the
  rest), a favourite brand per department and a personal brand loyalty (how often they buy the favourite).
* **Sequences.** A user browses: picks a department from their taste, a main product or an accessory, the
  favourite brand with probability equal to their loyalty, then an item by popularity. Right after buying a
  main product they tend to buy accessories for it (the sequential habit): with a probability that decays
  with each accessory already bought, an accessory that fits the main product, usually from the same line.
  Items already bought are avoided. Timestamps increase per user: hours to days between a product and its
  accessories, weeks between browsing purchases.

So the last item alone predicts accessories (first-order transitions), taste and brand loyalty need the
whole history, and the brand, line and type words in titles carry the same structure as text.
Everything is drawn from ``numpy.random.default_rng(seed)``: the same arguments give byte-identical files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class _Department:
    name: str
    category: str
    use: str  # ends a main product's description: "built for {use}"
    brands: tuple[str, ...]  # brand b owns lines 2b and 2b + 1
    lines: tuple[str, ...]
    colors: tuple[str, ...]
    mains: tuple[tuple[str, tuple[str, ...]], ...]  # (type, specs)
    accessories: tuple[tuple[str, tuple[int, ...], tuple[str, ...]], ...]  # (type, main types it fits, specs)


DEPARTMENTS: tuple[_Department, ...] = (
    _Department(
        "Cameras", "Electronics > Cameras", "travel and everyday shooting",
        ("Lumora", "Shutterfox", "Optivane", "Kamblu"),
        ("ProShot", "Vistara", "Snapwise", "Aperio", "Framecraft", "Lenzo", "Pixalto", "Nightjar"),
        ("Black", "Silver", "Graphite", "Olive"),
        (("Mirrorless Camera", ("20MP", "24MP", "33MP", "45MP")),
         ("Action Camera", ("4K60", "5.3K", "4K Waterproof")),
         ("Instant Camera", ("Mini Film", "Square Film", "Wide Film"))),
        (("Zoom Lens", (0,), ("18-55mm", "24-105mm", "70-200mm")),
         ("Prime Lens", (0,), ("35mm f/1.8", "50mm f/1.4", "85mm f/1.8")),
         ("Camera Battery", (0, 1), ("1800mAh", "2200mAh")),
         ("Memory Card", (0, 1), ("64GB", "128GB", "256GB")),
         ("Camera Bag", (0, 1, 2), ("Sling", "Backpack", "Shoulder")),
         ("Tripod", (0, 1), ("Travel", "Carbon", "Tabletop")),
         ("Film Pack", (2,), ("10 Shots", "20 Shots", "Monochrome")),
         ("Mounting Kit", (1,), ("Helmet", "Chest", "Handlebar"))),
    ),
    _Department(
        "Audio", "Electronics > Audio", "music at home and on the go",
        ("Sonnery", "Vobloq", "Humtide", "Audrex"),
        ("Aura", "Pulse", "Echomax", "Cadence", "Drift", "Tempo", "Halo", "Resonant"),
        ("Black", "White", "Midnight Blue", "Sand"),
        (("Wireless Headphones", ("Noise Cancelling", "Over-Ear", "On-Ear")),
         ("Bluetooth Speaker", ("Waterproof", "20W", "40W")),
         ("Turntable", ("Belt Drive", "Direct Drive", "USB")),
         ("Soundbar", ("2.1 Channel", "3.1 Channel", "5.1 Channel"))),
        (("Headphone Case", (0,), ("Hard Shell", "Soft Pouch")),
         ("Ear Cushions", (0,), ("Memory Foam", "Velour")),
         ("Charging Cable", (0, 1), ("USB-C 1m", "USB-C 2m")),
         ("Speaker Stand", (1, 3), ("Desktop", "Floor")),
         ("Stylus Cartridge", (2,), ("Moving Magnet", "Elliptical")),
         ("Record Cleaning Kit", (2,), ("Brush", "Fluid")),
         ("Subwoofer", (3,), ("8-inch", "10-inch")),
         ("Wall Mount", (1, 3), ("Tilting", "Fixed"))),
    ),
    _Department(
        "Kitchen", "Home & Kitchen > Small Appliances", "a busy home kitchen",
        ("Brewvik", "Culinoa", "Saporex", "Whiskett"),
        ("Barista", "Crema", "Harvest", "Velvet", "Artisan", "Rustica", "Everyday", "Maestro"),
        ("Matte Black", "Cream", "Stainless", "Sage"),
        (("Espresso Machine", ("15 Bar", "19 Bar", "Dual Boiler")),
         ("Stand Mixer", ("5 Qt", "6 Qt", "7 Qt")),
         ("Blender", ("1000W", "1500W", "Personal")),
         ("Air Fryer", ("4 Qt", "6 Qt", "8 Qt"))),
        (("Milk Frothing Pitcher", (0,), ("12 oz", "20 oz")),
         ("Espresso Tamper", (0,), ("51mm", "58mm")),
         ("Descaling Solution", (0,), ("2 Pack", "4 Pack")),
         ("Mixing Bowl", (1,), ("Stainless", "Glass")),
         ("Dough Hook", (1,), ("Coated", "Stainless")),
         ("Blender Jar", (2,), ("48 oz", "64 oz")),
         ("Air Fryer Liners", (3,), ("Parchment 100 Pack", "Silicone 2 Pack")),
         ("Grill Pan", (3,), ("Nonstick", "Ceramic"))),
    ),
    _Department(
        "Camping", "Sports & Outdoors > Camping", "backcountry trips",
        ("Trailnook", "Summitra", "Pinewhistle", "Ridgefjall"),
        ("Alpine", "Basecamp", "Nomad", "Ember", "Ranger", "Highline", "Tundra", "Canyon"),
        ("Forest Green", "Orange", "Slate", "Desert Tan"),
        (("Backpacking Tent", ("1-Person", "2-Person", "3-Person")),
         ("Sleeping Bag", ("20F", "30F", "0F")),
         ("Camp Stove", ("Canister", "Two-Burner", "Wood"))),
        (("Tent Footprint", (0,), ("Standard", "Ultralight")),
         ("Tent Stakes", (0,), ("Aluminum 8 Pack", "Titanium 6 Pack")),
         ("Sleeping Pad", (1,), ("Inflatable", "Foam")),
         ("Compression Sack", (1,), ("10L", "15L")),
         ("Fuel Canister", (2,), ("100g", "230g")),
         ("Cookset", (2,), ("1-Pot", "2-Pot")),
         ("Headlamp", (0, 1, 2), ("300 Lumen", "500 Lumen")),
         ("Lantern", (0, 2), ("Solar", "Rechargeable"))),
    ),
    _Department(
        "Gaming", "Electronics > Video Games", "long gaming sessions",
        ("Pixelwolf", "Ludora", "Nexquake", "Joyvex"),
        ("Titan", "Nova", "Blaze", "Orbit", "Rift", "Vortex", "Apex", "Hyper"),
        ("Black", "White", "Neon Red", "Cobalt"),
        (("Game Console", ("1TB", "2TB", "Digital Edition")),
         ("Gaming Laptop", ("15-inch", "17-inch", "240Hz")),
         ("Handheld Console", ("OLED", "64GB", "256GB"))),
        (("Wireless Controller", (0, 2), ("Standard", "Elite")),
         ("Gaming Headset", (0, 1), ("Wired", "Wireless")),
         ("Charging Dock", (0, 2), ("Dual", "Quad")),
         ("Carrying Case", (1, 2), ("Hard Shell", "Slim")),
         ("Laptop Cooling Pad", (1,), ("5 Fan", "RGB")),
         ("Screen Protector", (2,), ("Tempered Glass", "Anti-Glare")),
         ("Gaming Mouse", (1,), ("Wired", "Wireless")),
         ("Console Stand", (0,), ("Vertical", "Cooling"))),
    ),
    _Department(
        "Office", "Office Products > Workspace", "long days at a home office",
        ("Deskora", "Ergolith", "Plinthy", "Quorvo"),
        ("Elevate", "Focus", "Summit", "Flow", "Studio", "Corewise", "Horizon", "Atlas"),
        ("Walnut", "White", "Black", "Oak"),
        (("Standing Desk", ("48-inch", "60-inch", "72-inch")),
         ("Ergonomic Chair", ("Mesh", "Leather", "High-Back")),
         ("Monitor", ("27-inch 4K", "32-inch QHD", "34-inch Ultrawide"))),
        (("Monitor Arm", (0, 2), ("Single", "Dual")),
         ("Desk Mat", (0,), ("Felt", "Leather")),
         ("Chair Mat", (1,), ("Carpet", "Hard Floor")),
         ("Keyboard Tray", (0,), ("Clamp-On", "Under-Desk")),
         ("Cable Tray", (0,), ("Steel", "Mesh")),
         ("Lumbar Pillow", (1,), ("Memory Foam", "Mesh")),
         ("Footrest", (0, 1), ("Rocking", "Adjustable")),
         ("Monitor Light Bar", (2,), ("Warm", "Dimmable"))),
    ),
    _Department(
        "Toys", "Toys & Games > Building & Play Sets", "creative play at home",
        ("Brickwell", "Tinkado", "Playmoor", "Gizzlo"),
        ("Metroville", "Castlecrag", "Galaxo", "Safaria", "Harborline", "Railbright", "Dreamnest", "Robotix"),
        ("Multicolor", "Pastel", "Primary", "Natural Wood"),
        (("Building Set", ("500 Pieces", "1200 Pieces", "2000 Pieces")),
         ("Train Set", ("Battery", "Wooden", "Remote Control")),
         ("Dollhouse", ("3-Story", "Cottage", "Townhouse"))),
        (("Expansion Pack", (0,), ("Small", "Large")),
         ("Minifigure Pack", (0, 2), ("6 Figures", "12 Figures")),
         ("Track Extension", (1,), ("Straight", "Curved")),
         ("Train Car Set", (1,), ("Cargo", "Passenger")),
         ("Dollhouse Furniture Set", (2,), ("Kitchen", "Bedroom")),
         ("Storage Bin", (0, 1, 2), ("Stackable", "Rolling")),
         ("Light Kit", (0, 2), ("USB", "Battery")),
         ("Baseplate", (0,), ("10-inch", "15-inch"))),
    ),
    _Department(
        "Hair Care", "Beauty > Hair Care", "salon results at home",
        ("Silkaura", "Velluto", "Tressana", "Lumibelle"),
        ("Salonix", "Ionica", "Silkline", "Radiance", "Voluma", "Smoothe", "Curlista", "Luxeva"),
        ("Rose Gold", "Black", "Pearl White", "Lilac"),
        (("Hair Dryer", ("1875W", "Ionic", "Compact")),
         ("Flat Iron", ("1-inch", "1.5-inch", "Titanium")),
         ("Curling Wand", ("1-inch", "1.25-inch", "Tapered"))),
        (("Diffuser Attachment", (0,), ("Universal", "Wide")),
         ("Concentrator Nozzle", (0,), ("Slim", "Wide")),
         ("Heat Protectant Spray", (0, 1, 2), ("4 oz", "8 oz")),
         ("Heat Resistant Glove", (1, 2), ("Single", "Pair")),
         ("Styling Brush", (0,), ("Round", "Paddle")),
         ("Sectioning Clips", (1, 2), ("6 Pack", "12 Pack")),
         ("Travel Pouch", (1, 2), ("Heat Proof", "Quilted")),
         ("Argan Serum", (0, 1, 2), ("2 oz", "4 oz"))),
    ),
    _Department(
        "Fitness", "Sports & Outdoors > Exercise & Fitness", "daily workouts at home",
        ("Kinetra", "Flexorum", "Strivelo", "Pulsegrit"),
        ("Endure", "Velocity", "Corestrong", "Stride", "Powerhaus", "Zenith", "Momentum", "Forge"),
        ("Black", "Gray", "Red", "Teal"),
        (("Treadmill", ("Folding", "Incline", "Walking Pad")),
         ("Exercise Bike", ("Magnetic", "Recumbent", "Spin")),
         ("Rowing Machine", ("Magnetic", "Water", "Air"))),
        (("Equipment Mat", (0, 1, 2), ("Small", "Large")),
         ("Heart Rate Monitor", (0, 1, 2), ("Chest Strap", "Armband")),
         ("Bike Seat Cushion", (1,), ("Gel", "Wide")),
         ("Cycling Shoes", (1,), ("SPD", "Delta")),
         ("Treadmill Lubricant", (0,), ("4 oz", "8 oz")),
         ("Rower Seat Pad", (2,), ("Foam", "Gel")),
         ("Tablet Holder", (0, 1, 2), ("Clamp", "Magnetic")),
         ("Resistance Bands", (1, 2), ("Light", "Heavy"))),
    ),
    _Department(
        "Dogs", "Pet Supplies > Dogs", "happy dogs and their owners",
        ("Wagglo", "Pawsbury", "Barkhaven", "Snoutley"),
        ("Cozynest", "Trailpaw", "Classico", "Urbanpup", "Snuggle", "Roamer", "Comfy", "Scoutly"),
        ("Gray", "Navy", "Tan", "Forest Green"),
        (("Dog Crate", ("Small", "Medium", "Large")),
         ("Orthopedic Dog Bed", ("Medium", "Large", "XL")),
         ("GPS Dog Collar", ("Small", "Medium", "Large"))),
        (("Crate Cover", (0,), ("Small", "Large")),
         ("Crate Pad", (0,), ("Quilted", "Waterproof")),
         ("Bed Cover", (1,), ("Plush", "Canvas")),
         ("Waterproof Liner", (1,), ("Medium", "Large")),
         ("Collar Charger", (2,), ("Magnetic", "USB")),
         ("Leash", (2,), ("6 ft", "Hands-Free")),
         ("Chew Toy", (0, 1), ("Rubber", "Rope")),
         ("Water Bowl", (0,), ("Clip-On", "Travel"))),
    ),
)

MAIN, ACCESSORY = 0, 1
_MAIN_SHARE = 0.35  # of each department's items
_POPULARITY_EXPONENT = 0.7  # Zipf exponent of item popularity within a department ...
_POPULARITY_FLOOR = 0.03  # ... plus this, so the tail still clears a 5-core filter
_BRAND_EXPONENT = 0.7  # Zipf exponent of how often a brand is someone's favourite
_P_ACCESSORY = 0.75  # after a main product: chance the next purchase is an accessory for it ...
_ACCESSORY_DECAY = 0.5  # ... multiplied by this for each accessory already bought for it
_P_SAME_LINE = 0.75  # an accessory for a main product comes from its line (else any brand's, if it fits)
_P_BROWSE_MAIN = 0.45  # a browsing purchase is a main product (else an accessory)
_CURIOSITY = 0.05  # share of a user's taste spread over all departments
_RETRIES = 5  # redraws of an item the user already bought
_START, _SPAN = 1_514_764_800, 4 * 365 * 86_400  # sequences begin 2018-01-01 .. 2021-12-31
_GAP_ACCESSORY, _GAP_BROWSE = 2 * 86_400, 20 * 86_400  # mean seconds before an accessory / a browsing buy


@dataclass
class SyntheticData:
    """A generated catalogue and log. ``items`` holds the csv columns plus the latent ``department``,
    ``line``, ``kind`` (``MAIN`` / ``ACCESSORY``) and ``product_type``, which tests and analyses use;
    ``interactions`` is grouped by user, chronological."""

    items: pd.DataFrame
    interactions: pd.DataFrame

    def summary(self) -> dict:
        titles = self.items["title"]
        lengths = self.interactions.groupby("user", sort=False).size()
        distinct = sorted(set(titles))  # titles extending s sort right after s
        prefixes = {s for s, t in zip(distinct, distinct[1:], strict=False) if t.startswith(s)}
        return {
            "items": len(self.items),
            "users": len(lengths),
            "interactions": len(self.interactions),
            "mean_length": round(float(lengths.mean()), 2),
            "departments": int(self.items["department"].nunique()),
            "main_items": int((self.items["kind"] == MAIN).sum()),
            "duplicate_title_items": int(titles.duplicated(keep=False).sum()),
            "prefix_title_items": int(titles.isin(prefixes).sum()),
        }


class _Groups:
    """Weighted item groups laid out flat, so one vectorised draw can sample a different group per user."""

    def __init__(self, members: list[np.ndarray], weights: np.ndarray) -> None:
        self.items = np.concatenate(members)
        self.cum = np.cumsum(weights[self.items])
        self.end = np.cumsum([len(m) for m in members])
        self.low = np.r_[0.0, self.cum[self.end[:-1] - 1]]
        self.high = self.cum[self.end - 1]

    def draw(self, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        target = self.low[groups] + rng.random(len(groups)) * (self.high[groups] - self.low[groups])
        return self.items[np.minimum(np.searchsorted(self.cum, target, side="right"), self.end[groups] - 1)]


def _in_sentence(type_name: str, plural: bool = False) -> str:
    """``"GPS Dog Collar"`` -> ``"GPS dog collars"``: lower case but for acronyms."""
    words = " ".join(w if w.isupper() else w.lower() for w in type_name.split())
    return words + "s" if plural and not words.endswith("s") else words


def _catalogue(n_items: int, dept_weight: np.ndarray, duplicate_rate: float, rng: np.random.Generator) -> pd.DataFrame:
    """Items with their latent structure; rows in a shuffled order so ids reveal nothing.

    Departments get items in proportion to their popularity, so traffic per item is even across them and
    the Zipf tail of a quiet department does not fall below a 5-core filter.
    """
    rows = []
    share = np.r_[0, np.cumsum(dept_weight)] / dept_weight.sum()
    counts = 2 + np.diff(np.round(share * (n_items - 2 * len(DEPARTMENTS))).astype(int))
    for d, (dept, count) in enumerate(zip(DEPARTMENTS, counts, strict=True)):
        n_main = min(max(1, round(count * _MAIN_SHARE)), count - 1)
        for kind, n_kind, types in ((MAIN, n_main, dept.mains), (ACCESSORY, count - n_main, dept.accessories)):
            type_of = rng.permutation(np.arange(n_kind) % len(types))
            line_of = rng.permutation(np.arange(n_kind) % len(dept.lines))
            spec_draw, color_of = rng.random(n_kind), rng.integers(0, len(dept.colors), n_kind)
            popularity = rng.permutation(n_kind) + 1.0
            for t, line, u, color, rank in zip(type_of, line_of, spec_draw, color_of, popularity, strict=True):
                specs = types[t][-1]
                rows.append((d, kind, int(t), int(line), specs[int(u * len(specs))], dept.colors[color], rank))
    frame = pd.DataFrame(rows, columns=["d", "kind", "t", "line", "spec", "color", "rank"])
    frame["weight"] = frame["rank"] ** -_POPULARITY_EXPONENT + _POPULARITY_FLOOR
    frame = frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)

    # model codes unique within (department, line, kind, type) make every base title unique
    group = frame.groupby(["d", "line", "kind", "t"], sort=True).ngroup().to_numpy()
    order = np.argsort(group, kind="stable")
    first = np.r_[True, group[order][1:] != group[order][:-1]]
    within = np.arange(len(order)) - np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
    numbers = np.empty(len(frame), dtype=int)
    numbers[order] = 2 + within * 3 + rng.integers(0, 3, len(order))

    titles, bases, descriptions, brands, categories, types_, lines = [], [], [], [], [], [], []
    for row, number in zip(frame.itertuples(index=False), numbers, strict=True):
        dept = DEPARTMENTS[row.d]
        brand, line = dept.brands[row.line // 2], dept.lines[row.line]
        if row.kind == MAIN:
            kind_name = dept.mains[row.t][0]
            text = f"{row.spec} {_in_sentence(kind_name)} from the {brand} {line} range in {row.color.lower()}, " \
                   f"built for {dept.use}."
        else:
            kind_name, fits, _ = dept.accessories[row.t]
            made_for = [_in_sentence(dept.mains[m][0], plural=True) for m in fits]
            made_for = " and ".join([", ".join(made_for[:-1]), made_for[-1]] if len(made_for) > 1 else made_for)
            text = f"{row.spec} {_in_sentence(kind_name)} from the {brand} {line} range, made for {made_for}."
        base = f"{brand} {line} {line[0]}{number} {kind_name}"
        bases.append(base)
        titles.append(f"{base}, {row.spec}, {row.color}")
        descriptions.append(text)
        brands.append(brand)
        categories.append(dept.category)
        types_.append(kind_name)
        lines.append(f"{brand} {line}")

    _share_titles(group, titles, bases, descriptions, duplicate_rate, rng)
    return pd.DataFrame({
        "item": _names("i", len(frame)), "title": titles, "description": descriptions,
        "brand": brands, "category": categories, "department": [DEPARTMENTS[d].name for d in frame["d"]],
        "line": lines, "kind": frame["kind"].to_numpy(), "product_type": types_,
        "d": frame["d"].to_numpy(), "line_index": frame["line"].to_numpy(), "t": frame["t"].to_numpy(),
        "weight": frame["weight"].to_numpy(),
    })


def _share_titles(group: np.ndarray, titles: list[str], bases: list[str], descriptions: list[str],
                  duplicate_rate: float, rng: np.random.Generator) -> None:
    """Turns some items into re-listings of a sibling (same title and description) and a few into
    bare-base titles that are a prefix of a sibling's full title; siblings share line and type."""
    n_duplicates = int(round(len(titles) * duplicate_rate / 2))  # each pair makes two items share a title
    n_prefixes = max(1, n_duplicates // 3)
    used = np.zeros(len(titles), dtype=bool)
    made = 0
    for a in rng.permutation(len(titles)):
        if made == n_duplicates + n_prefixes:
            break
        siblings = np.flatnonzero((group == group[a]) & ~used & (np.arange(len(titles)) != a))
        if used[a] or not len(siblings):
            continue
        b = int(siblings[rng.integers(len(siblings))])
        if made < n_duplicates:
            titles[a], descriptions[a] = titles[b], descriptions[b]
        else:
            titles[a] = bases[b]
        used[[a, b]] = True
        made += 1


def _names(prefix: str, count: int) -> list[str]:
    """Zero-padded raw ids, so sorting them as strings keeps generation order."""
    width = max(5, len(str(count - 1)))
    return [f"{prefix}{i:0{width}d}" for i in range(count)]


def _sampling_groups(items: pd.DataFrame) -> tuple[_Groups, np.ndarray, np.ndarray, np.ndarray]:
    """The groups purchases are drawn from, with fallbacks so that none is empty.

    Returns the groups; ``browse[department, kind, brand]`` (brand ``n_brands``: any brand); and per main
    item, the group of accessories that fit it from its own line and from any line (-1 for accessories).
    """
    n_depts, n_brands = len(DEPARTMENTS), len(DEPARTMENTS[0].brands)
    dept, kind, line, type_ = (items[c].to_numpy() for c in ("d", "kind", "line_index", "t"))
    members: list[np.ndarray] = []
    browse = np.empty((n_depts, 2, n_brands + 1), dtype=int)
    for d in range(n_depts):
        for k in (MAIN, ACCESSORY):
            candidates = np.flatnonzero((dept == d) & (kind == k))
            browse[d, k, n_brands] = len(members)
            members.append(candidates)
            for b in range(n_brands):
                own = candidates[line[candidates] // 2 == b]
                browse[d, k, b] = len(members) if len(own) else browse[d, k, n_brands]
                if len(own):
                    members.append(own)
    same_line, any_line = np.full(len(items), -1), np.full(len(items), -1)
    for m in np.flatnonzero(kind == MAIN):
        d = dept[m]
        fitting = [a for a, (_, mains, _) in enumerate(DEPARTMENTS[d].accessories) if type_[m] in mains]
        suits = (dept == d) & (kind == ACCESSORY) & np.isin(type_, fitting)
        for target, candidates in ((any_line, np.flatnonzero(suits)),
                                   (same_line, np.flatnonzero(suits & (line == line[m])))):
            if len(candidates):
                target[m] = len(members)
                members.append(candidates)
        any_line[m] = any_line[m] if any_line[m] >= 0 else browse[d, ACCESSORY, n_brands]
        same_line[m] = same_line[m] if same_line[m] >= 0 else any_line[m]
    return _Groups(members, items["weight"].to_numpy()), browse, same_line, any_line


def _users(n_users: int, dept_weight: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Per user: cumulative taste over departments (one to three liked ones, popular ones more often),
    a favourite brand per department (earlier brands more often) and a loyalty to it in [0, 0.8]."""
    n_depts, n_brands = len(DEPARTMENTS), len(DEPARTMENTS[0].brands)
    n_liked = rng.choice(3, n_users, p=[0.35, 0.45, 0.2]) + 1
    keys = np.log(dept_weight) + rng.gumbel(size=(n_users, n_depts))
    liked_rank = np.argsort(np.argsort(-keys, axis=1), axis=1)
    taste = np.where(liked_rank < n_liked[:, None], rng.gamma(2.0, 1.0, (n_users, n_depts)), 0.0)
    taste = (1 - _CURIOSITY) * taste / taste.sum(axis=1, keepdims=True) + _CURIOSITY / n_depts
    brand_cum = np.cumsum(np.arange(1, n_brands + 1) ** -_BRAND_EXPONENT)
    favourite = np.searchsorted(brand_cum, rng.random((n_users, n_depts)) * brand_cum[-1], side="right")
    return np.cumsum(taste, axis=1), favourite, rng.beta(2.0, 2.0, n_users) * 0.8


def generate(n_users: int = 3000, n_items: int = 1500, mean_length: float = 18.0, seed: int = 0,
             duplicate_rate: float = 0.01) -> SyntheticData:
    """The catalogue and interaction log of the story in the module docstring (nothing written).

    Users advance one purchase per step together, each step vectorised over every user still shopping.
    """
    if n_items < 10 * len(DEPARTMENTS):
        raise ValueError(f"n_items must be at least {10 * len(DEPARTMENTS)}, got {n_items}")
    if n_users < 1:
        raise ValueError(f"n_users must be positive, got {n_users}")
    if mean_length <= 5:
        raise ValueError(f"mean_length must exceed 5 (every user buys at least 5 items), got {mean_length}")
    if not 0 <= duplicate_rate < 0.5:
        raise ValueError(f"duplicate_rate must lie in [0, 0.5), got {duplicate_rate}")
    rng = np.random.default_rng(seed)
    n_depts, n_brands = len(DEPARTMENTS), len(DEPARTMENTS[0].brands)
    dept_weight = rng.gamma(8.0, 1.0, n_depts)
    items = _catalogue(n_items, dept_weight, duplicate_rate, rng)
    kind = items["kind"].to_numpy()
    groups, browse, same_line, any_line = _sampling_groups(items)
    taste_cum, favourite, loyalty = _users(n_users, dept_weight, rng)
    lengths = 5 + rng.negative_binomial(2, 2 / (2 + mean_length - 5), n_users)
    clock = _START + rng.integers(0, _SPAN, n_users)

    sequence = np.full((n_users, lengths.max()), -1)
    stamps = np.zeros((n_users, lengths.max()), dtype=np.int64)
    open_main = np.full(n_users, -1)  # the main product a user is buying accessories for
    bought_for_main = np.zeros(n_users, dtype=int)
    for step in range(lengths.max()):
        users = np.flatnonzero(lengths > step)
        n = len(users)
        main = open_main[users]
        accessory = (main >= 0) & (rng.random(n) < _P_ACCESSORY * _ACCESSORY_DECAY ** bought_for_main[users])
        d = np.minimum((taste_cum[users] < rng.random(n)[:, None]).sum(axis=1), n_depts - 1)
        k = np.where(rng.random(n) < _P_BROWSE_MAIN, MAIN, ACCESSORY)
        b = np.where(rng.random(n) < loyalty[users], favourite[users, d], n_brands)
        fits = np.where(rng.random(n) < _P_SAME_LINE, same_line[np.maximum(main, 0)], any_line[np.maximum(main, 0)])
        group = np.where(accessory, fits, browse[d, k, b])
        item = groups.draw(group, rng)
        for _ in range(_RETRIES):
            again = np.flatnonzero((sequence[users, :step] == item[:, None]).any(axis=1))
            if not len(again):
                break
            item[again] = groups.draw(group[again], rng)
        gap = np.where(accessory, _GAP_ACCESSORY, _GAP_BROWSE)
        clock[users] += 3600 + (rng.exponential(1.0, n) * gap).astype(np.int64)
        sequence[users, step], stamps[users, step] = item, clock[users]
        bought_for_main[users] = np.where(accessory, bought_for_main[users] + 1, 0)
        open_main[users] = np.where(accessory, main, np.where(kind[item] == MAIN, item, -1))

    filled = sequence >= 0
    user_index = np.repeat(np.arange(n_users), filled.sum(axis=1))
    interactions = pd.DataFrame({"user": np.asarray(_names("u", n_users), dtype=object)[user_index],
                                 "item": items["item"].to_numpy()[sequence[filled]], "timestamp": stamps[filled]})
    columns = ["item", "title", "description", "brand", "category", "department", "line", "kind", "product_type"]
    return SyntheticData(items[columns], interactions)


def write_synthetic(out: str | Path, n_users: int = 3000, n_items: int = 1500, mean_length: float = 18.0,
                    seed: int = 0, duplicate_rate: float = 0.01) -> dict:
    """Writes ``items.csv`` and ``interactions.csv`` (the ``csv`` source format) to ``out``; returns a summary.

    The defaults (about 54k interactions) keep the whole demo, SASRec included, to minutes on a laptop CPU.
    """
    data = generate(n_users=n_users, n_items=n_items, mean_length=mean_length, seed=seed,
                    duplicate_rate=duplicate_rate)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data.items[["item", "title", "description", "brand", "category"]].to_csv(
        out / "items.csv", index=False, lineterminator="\n")
    data.interactions.to_csv(out / "interactions.csv", index=False, lineterminator="\n")
    return {**data.summary(), "seed": seed, "out": str(out)}
