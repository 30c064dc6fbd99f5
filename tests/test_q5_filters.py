"""Q5 computations on crafted inputs whose answer is known: top faces (blank images and repeated photos left out),
AUROC tuning against a random network and the last layer's votes, the rows shown and their labels (the top faces'
majority), attribute shifts beyond the class (missing values left out), face attributes from hand-placed landmarks,
the face part a filter looks at (each part blurred in turn, against the average filter) and a face grown by gradient
ascent (the part it changes, against an untrained network)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from fer_lib.data import face_attributes as fa
from fer_lib.data.face_attributes import attributes_from_landmarks
from fer_lib.questions.q5_filters import (
    ALPHA,
    FACE_PARTS,
    RESPONSE_LAYER,
    TOP_K,
    PartDrops,
    attribute_shift,
    auroc_by_class,
    class_tuning,
    filter_responses,
    grow_faces,
    growth_parts,
    informative_faces,
    majority,
    part_drops,
    pick_filters,
    top_faces,
    within_class_z,
)
from tests.test_q4_saliency import frontal_points


def test_blank_and_near_uniform_faces_are_never_top_faces():
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (5, 48, 48)).astype(np.uint8)
    faces[1] = 0  # blank
    faces[3] = 120 + rng.integers(0, 3, (48, 48))  # near-uniform: std about 0.8 gray levels
    valid = informative_faces(faces)
    assert valid.tolist() == [True, False, True, False, True]
    responses = np.array([[1.0], [9.0], [2.0], [8.0], [3.0]])  # the blank faces respond most
    np.testing.assert_array_equal(top_faces(responses, k=3, valid=valid), [[4, 2, 0]])
    np.testing.assert_array_equal(top_faces(responses, k=5, valid=valid), [[4, 2, 0]])  # only 3 left


def test_top_faces_hold_one_face_per_duplicate_group():
    rng = np.random.default_rng(1)
    responses = rng.normal(size=(60, 4))
    groups = np.arange(60) // 3  # every photo three times
    groups[[0, 59]] = 100  # and two far-apart faces of one photo
    top = top_faces(responses, k=12, groups=groups)
    assert top.shape == (4, 12)
    for f, row in enumerate(top):
        assert len(set(groups[row])) == 12  # no photo twice
        # and each is the strongest face of its photo, taken in order of response
        assert (np.diff(responses[row, f]) <= 0).all()
        for i in row:
            assert responses[i, f] == responses[groups == groups[i], f].max()


def test_top_faces_are_the_strongest_responders():
    responses = np.array([[0.1, 5.0], [3.0, 0.2], [2.0, 4.0]])
    np.testing.assert_array_equal(top_faces(responses, k=2), [[1, 2], [0, 2]])


def test_auroc_by_class_matches_sklearn_with_ties_and_its_error_matches_a_bootstrap():
    rng = np.random.default_rng(1)
    labels = np.r_[np.full(200, 2), np.zeros(800, int)]
    scores = np.round(rng.normal(size=(1000, 2)) + (labels == 2)[:, None] * [1, -1], 1)  # rounding makes ties
    auc, se = auroc_by_class(scores, labels)
    np.testing.assert_allclose(auc[2], [roc_auc_score(labels == 2, scores[:, j]) for j in range(2)])
    assert auc[2, 0] > 0.7 and auc[2, 1] < 0.3 and np.isnan(auc[1]).all()  # no faces of class 1: undefined
    boot = [roc_auc_score(labels[i] == 2, scores[i, 0]) for i in rng.integers(0, 1000, (300, 1000))]
    assert se[2, 0] == pytest.approx(np.std(boot), rel=0.25)
    assert auroc_by_class(scores[::5], labels[::5])[1][2, 0] > se[2, 0]  # fewer faces, a wider error


def tuned_setup(seed=0, n=1400):
    """Labels FER2013-like; trained filter 0 fires for Fear (2), filter 1 for Happy (3) and Surprise (5) alike,
    filter 2 is noise; the random network's filters are noise everywhere."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(7, n, p=[0.14, 0.02, 0.14, 0.25, 0.17, 0.11, 0.17])
    responses = rng.normal(size=(n, 3))
    responses[labels == 2, 0] += 4
    responses[np.isin(labels, [3, 5]), 1] += 3
    fc = np.zeros((7, 3))
    fc[2, 0], fc[0, 1], fc[4, 2] = 1.0, 1.0, 1.0  # filter 0 votes Fear, filter 1 votes Angry
    return labels, responses, rng.normal(size=(n, 3)), fc


def test_a_filter_built_for_one_class_is_tuned_beyond_the_random_network_and_votes_for_it():
    labels, responses, random_responses, fc = tuned_setup()
    auc, se = auroc_by_class(responses, labels)
    assert auc.shape == se.shape == (7, 3)
    for c in range(7):  # ranked once for all classes: the same as sklearn class by class
        np.testing.assert_allclose(auc[c], [roc_auc_score(labels == c, responses[:, f]) for f in range(3)])
    t = class_tuning(responses, random_responses, labels, fc)
    assert t.preferred[0] == 2 and t.best[0] > 0.95  # filter 0: Fear
    assert abs(t.random_best[0] - 0.5) < 0.1  # the random network's filter 0 does not
    assert t.tuned.tolist() == [True, True, False]
    assert t.one_class.tolist() == [True, False, False] and t.mixed.tolist() == [False, True, False]
    assert set(np.argsort(-t.auroc[:, 1])[:2]) == {3, 5}  # the mixed filter's two classes
    # votes: the preferred class gets the largest last-layer weight
    assert t.votes.tolist() == [True, False, t.preferred[2] == 4]
    assert t.by_class().tolist() == [0, 0, 1, 0, 0, 0, 0]
    assert t.by_class(t.one_class & t.votes)[2] == 1
    assert t.chance_votes(t.one_class) == pytest.approx(1.0)  # one filter: prefers Fear, votes Fear
    assert np.isnan(t.chance_votes(np.zeros(3, bool)))


def test_the_same_filter_in_both_networks_is_not_tuned():
    labels, responses, _, fc = tuned_setup(1)
    t = class_tuning(responses, responses, labels, fc)  # a "random" network identical to the trained one
    assert not t.tuned.any()


def test_blank_faces_are_left_out_of_the_tuning():
    labels, responses, random_responses, fc = tuned_setup(2)
    valid = np.ones(len(labels), bool)
    valid[labels == 2] = False  # every Fear face blank: filter 0 has nothing to prefer
    t = class_tuning(responses, random_responses, labels, fc, valid)
    assert np.isnan(t.auroc[2]).all() and (t.preferred != 2).all()  # no Fear faces, no Fear preference


def test_rows_are_labelled_by_their_top_faces_and_a_disagreeing_filter_comes_last():
    rng = np.random.default_rng(0)
    labels = rng.choice(7, 1400)
    responses = rng.normal(size=(1400, 16))
    for f in range(14):
        responses[labels == f % 7, f] += 2 + f // 7  # filters 7-13 fire more for their class
    responses[labels == 2, 14] += 2  # filter 14: Fear over the whole distribution...
    responses[np.flatnonzero(labels == 5)[:12], 14] += 20  # ...but its extreme tail is 12 Surprise faces
    fc = np.zeros((7, 16))
    fc[np.arange(7), np.arange(7, 14)] = 1  # filters 7-13 vote for their class
    fc[(np.arange(7) + 1) % 7, np.arange(7)] = 1  # filters 0-6 for the next class
    fc[2, 14] = fc[0, 15] = 1  # filter 14 votes Fear
    t = class_tuning(responses, rng.normal(size=(1400, 16)), labels, fc)
    top_class, top_count = majority(top_faces(responses, k=10), labels)
    assert t.preferred[14] == 2 and top_class[14] == 5 and top_count[14] == 10  # AUROC and the top faces disagree
    assert (top_class[:14] == np.arange(14) % 7).all()
    measured = np.full(16, TOP_K)  # top faces with landmarks
    chosen, other = pick_filters(t, top_class, top_count, measured)
    assert chosen[:7].tolist() == list(range(7, 14))  # per class the filter whose class, top faces and vote agree
    assert other == 7 and chosen[other] == 14 and len(chosen) == 8
    measured[7] = 0  # the only Angry filter that agrees stays, however few of its faces have landmarks...
    assert pick_filters(t, top_class, top_count, measured)[0][0] == 7
    fc[:, 0], fc[0, 0] = 0, 1  # ...but where filter 0 agrees too, with its faces measured, it is shown instead
    t = class_tuning(responses, rng.normal(size=(1400, 16)), labels, fc)
    assert t.votes[0] and pick_filters(t, top_class, top_count, measured)[0][0] == 0
    measured[7] = TOP_K  # (with both measured, the clearer filter 7 again)
    assert pick_filters(t, top_class, top_count, measured)[0][0] == 7
    top_class[7] = 3  # a filter whose top faces are mostly of another class is not its class's example
    assert pick_filters(t, top_class, top_count, measured)[0][1:6].tolist() == list(range(8, 13))


def test_face_attributes_are_missing_where_no_face_was_found(monkeypatch):
    import fer_lib.data.landmarks as landmarks

    pts = np.tile(np.linspace(0, 40, 68)[:, None], (3, 1, 2)).reshape(3, 68, 2)
    monkeypatch.setattr(landmarks, "face_landmarks", lambda images, **_: (pts, np.array([True, False, True])))
    faces = np.random.default_rng(0).integers(0, 256, (3, 48, 48)).astype(np.uint8)
    table = fa.face_attributes(faces)
    assert table["detected"].tolist() == [True, False, True]
    assert table.loc[1, list(fa.FROM_LANDMARKS)].isna().all() and table.loc[0, list(fa.FROM_LANDMARKS)].notna().all()
    assert table[["brightness", "contrast"]].notna().all().all()  # pixels need no landmarks


def test_within_class_z_and_attribute_shift_beyond_the_class():
    rng = np.random.default_rng(3)
    labels = np.repeat([0, 3], 300)
    values = rng.normal(size=(600, 2))
    values[labels == 3, 0] += 5  # class 3 has wide-open mouths: not a finding about any filter
    z = within_class_z(values, labels)
    for c in (0, 3):
        np.testing.assert_allclose(z[labels == c].mean(0), 0, atol=1e-9)
        np.testing.assert_allclose(z[labels == c].std(0), 1, atol=1e-9)
    responses = rng.normal(size=(600, 3))
    responses[:, 0] += 3 * values[:, 0]  # filter 0 follows attribute 0 (and so prefers class 3 faces)
    responses[:, 1] = np.where(labels == 3, 10, 0) + rng.normal(size=600)  # filter 1 follows the class only
    top = top_faces(responses, k=16)

    def counted(rows):  # (attribute, direction) -> filters of ``rows`` whose top faces count
        table, shift, p = attribute_shift(values, labels, top[rows], names=("mouth_open", "eye_open"),
                                          n_permutations=300)
        assert shift.shape == p.shape == (len(rows), 2)
        assert (p[:, 0] <= ALPHA).tolist() == [f == 0 for f in rows]  # each filter's own test: filter 0 only
        assert table.columns.tolist() == ["attribute", "top faces", "filters", "by chance (mean)",
                                          "by chance (95% up to)", "beyond chance"]
        return table.set_index(["attribute", "top faces"])["filters"].to_dict()

    assert counted([0])[("mouth opening", "higher")] == 1  # beyond its class: higher
    assert counted([0])[("mouth opening", "lower")] == 0
    assert counted([1])[("mouth opening", "higher")] == 0  # class 3's open mouths alone are not a shift


def test_attribute_shift_leaves_out_faces_without_a_value():
    rng = np.random.default_rng(4)
    labels = np.repeat([0, 1], 200)
    values = rng.normal(size=(400, 1))
    responses = rng.normal(size=(400, 2))
    responses[:16, 0] += 10  # filter 0's top faces: the first 16 faces
    values[:8, 0] = np.nan  # half its top 16 faces unmeasured
    values[:16, 0] = np.where(np.isnan(values[:16, 0]), np.nan, 3.0)  # the rest far above their class
    top = top_faces(responses, k=16)[:1]
    shift, z, _ = attribute_shift(values, labels, top, names=("mouth_open",), n_permutations=200)
    assert shift["filters"].tolist() == [1, 0] and z[0, 0] > 2  # the 8 measured faces decide; NaN does not count
    all_missing = values.copy()
    all_missing[:16] = np.nan
    missing, z, p = attribute_shift(all_missing, labels, top, names=("mouth_open",), n_permutations=50)
    assert missing["filters"].tolist() == [0, 0] and np.isnan(z[0, 0]) and p[0, 0] == 1


def test_attributes_from_hand_placed_landmarks():
    pts = np.zeros((2, 68, 2))
    pts[:, 0], pts[:, 16] = (4, 20), (44, 20)  # jaw ends: face 40 px wide
    pts[:, 30] = (24, 26)  # nose tip midway: frontal
    pts[1, 30] = (14, 26)  # face 1: nose near the jaw's point 0 end
    for eye in (slice(36, 42), slice(42, 48)):  # corners 10 px apart, lids 3 px apart: aspect ratio 0.3
        pts[:, eye] = [(0, 0), (3, -1.5), (7, -1.5), (10, 0), (7, 1.5), (3, 1.5)]
    pts[:, 17:27] = (5, -6)  # every brow point 6 px above its eye's centre (5, 0)
    pts[1, 17:27, 1] = -8  # face 1: brows raised to 8 px
    pts[:, 60:68] = [(18, 34), (21, 34), (24, 34), (27, 34), (30, 34), (27, 34), (24, 34), (21, 34)]
    pts[1, 65:68, 1] = 38  # face 1: lower inner lip 4 px below the upper one
    faces = np.stack([np.full((48, 48), 51), np.tile([0, 255], (48, 24))]).astype(np.uint8)
    a = attributes_from_landmarks(pts, faces)
    np.testing.assert_allclose(a["mouth_open"], [0, 4 / 40], atol=1e-6)
    np.testing.assert_allclose(a["eye_open"], [0.3, 0.3], atol=1e-6)
    np.testing.assert_allclose(a["brow_height"], [6 / 40, 8 / 40], atol=1e-6)
    assert a["head_turn"][0] == pytest.approx(0, abs=1e-6) and a["head_turn"][1] > 0.3
    np.testing.assert_allclose(a["brightness"], [0.2, 0.5], atol=1e-6)
    np.testing.assert_allclose(a["contrast"], [0, 0.5], atol=1e-6)


def test_a_filter_the_untrained_network_matches_at_large_is_not_tuned():
    from scipy.stats import false_discovery_control

    labels, responses, random_responses, fc = tuned_setup()
    rng = np.random.default_rng(5)
    weak = 0.3 * responses[:, :1] + rng.normal(size=(len(labels), 1))  # some Fear, its untrained twin none
    strong = np.where(labels == 2, 3.0, 0.0)[:, None] + rng.normal(size=(len(labels), 3))  # untrained, for Fear
    t = class_tuning(np.hstack([responses, weak, rng.normal(size=(len(labels), 3))]),
                     np.hstack([random_responses, rng.normal(size=(len(labels), 1)), strong]), labels,
                     np.hstack([fc, fc, fc[:, :1]]))
    assert t.random_threshold == pytest.approx(np.percentile(np.nanmax(t.random_auroc, 0), 95))
    assert t.random_threshold > 0.9 and t.best[0] > t.random_threshold  # filter 0 still beats it
    assert false_discovery_control(t.p)[3] <= ALPHA  # the weak filter beats its own untrained twin...
    assert t.tuned[[0, 3]].tolist() == [True, False]  # ...but not the untrained filters at large
    lo = class_tuning(-responses, random_responses, labels, fc)  # filter 0 now fires least for Fear
    assert lo.quiet_by_class().shape == (7,) and lo.quiet_by_class()[2] >= 1 and lo.quiet_by_class(0.0).sum() == 0


class PartNet(torch.nn.Module):
    """A stand-in network: channel j of its ``layer4.1.bn2`` is the pixel spread (texture) inside one fixed region of
    a frontal face, so blurring that region, and only it, lowers it; channel 2 is the mean gray level."""

    def __init__(self, masks: list[np.ndarray]):
        super().__init__()
        self.masks = [torch.as_tensor(m, dtype=torch.bool) for m in masks]
        tail = torch.nn.Module()
        tail.bn2 = torch.nn.Identity()
        self.layer4 = torch.nn.Sequential(torch.nn.Identity(), tail)
        self.fc = torch.nn.Linear(3, 7)

    def forward(self, x):
        gray = x[:, 0]
        out = torch.stack([gray[:, m].std(1) for m in self.masks] + [gray.mean((1, 2))], 1)[:, :, None, None]
        return self.fc(self.layer4[1].bn2(out).flatten(1))


def test_a_filter_that_sees_only_the_mouth_is_located_on_the_mouth(monkeypatch):
    import fer_lib.data.landmarks as landmarks
    from fer_lib.data.regions import landmark_regions

    points = frontal_points()
    regions = {k: v[0] for k, v in landmark_regions(points[None]).items()}
    model = PartNet([regions["mouth"], regions["eyes"]]).eval()
    assert model.get_submodule(RESPONSE_LAYER) is model.layer4[1].bn2
    found = np.array([True, True, True, True, True, True, False])
    monkeypatch.setattr(landmarks, "face_landmarks", lambda images, **_: (np.repeat(points[None], len(images), 0),
                                                                      np.resize(found, len(images))))
    images = np.random.default_rng(0).integers(40, 216, (7, 48, 48)).astype(np.uint8)  # textured everywhere
    faces = np.tile(np.arange(7), (3, 1))
    responses = filter_responses(model, images, 48)
    drops = part_drops(model, images, faces, np.array([0, 1, 2]), responses, np.ones(3), input_size=48)
    assert drops.drop.shape == drops.average.shape == (3, 7, len(FACE_PARTS))
    assert np.isnan(drops.drop[:, 6]).all() and drops.found[:, 6].tolist() == [False] * 3  # no landmarks: left out
    mouth, eyes = FACE_PARTS.index("mouth"), FACE_PARTS.index("eyes")
    assert (drops.drop[0, :6, mouth] > 0.5).all() and (np.abs(drops.drop[0, :6, eyes]) < 0.05).all()
    np.testing.assert_allclose(drops.average[0], drops.drop.mean(0))  # the control: all filters' mean
    assert drops.named() == [[mouth], [eyes], []]  # the mean gray level looks at no part
    maps = drops.maps()
    assert maps.shape == (3, 7, 48, 48) and (maps[0, 0][regions["mouth"]] > 0.5).all()
    assert (maps[0, 0][regions["eyes"] | regions["outside_face"]] < 0.05).all() and (maps[:, 6] == 0).all()


def test_a_part_every_filter_loses_is_not_named_and_a_close_second_part_is():
    rng = np.random.default_rng(1)
    drop, average = rng.normal(0, 0.05, (2, 3, 12, 4))
    drop[0, :, 3] += 1.0  # filter 0 loses on the mouth...
    average[0, :, 3] += 1.0  # ...as much as the average filter does there
    drop[1, :, 1] += 1.0  # filter 1: the eyes, and the brows nearly as much
    drop[1, :, 0] += 0.9
    drop[2, :, 1] += 1.0  # filter 2: the eyes; the brows far less
    drop[2, :, 0] += 0.4
    drop[:, 10:] = average[:, 10:] = np.nan  # two faces without landmarks
    parts = PartDrops(drop, average, np.zeros((3, 12, 4, 48, 48), bool), np.zeros((3, 12, 68, 2)),
                      np.arange(12) < 10)
    assert parts.named() == [[], [1, 0], [1]]
    average[2, :10, 1] += 0.8  # filter 2: the eyes exceed the control by only 0.2 (under 3/4 of the brows' 0.4)
    assert parts.named()[2] == [0]  # the brows, which exceed the control by 0.4, come first, though raw fall is less


class MeanNet(torch.nn.Module):
    """A stand-in network: channel j of its ``layer4.1.bn2`` is ``signs[j]`` times the mean gray level inside
    region ``masks[j]``, so raising it means lightening (or darkening) that region only."""

    def __init__(self, masks: list[np.ndarray], signs: list[float]):
        super().__init__()
        self.masks = torch.as_tensor(np.stack(masks), dtype=torch.float32)
        self.signs = torch.as_tensor(signs, dtype=torch.float32)
        tail = torch.nn.Module()
        tail.bn2 = torch.nn.Identity()
        self.layer4 = torch.nn.Sequential(torch.nn.Identity(), tail)
        self.fc = torch.nn.Linear(len(masks), 7)

    def forward(self, x):
        means = torch.einsum("bij,cij->bc", x[:, 0], self.masks) / self.masks.sum((1, 2))
        return self.fc(self.layer4[1].bn2((self.signs * means)[:, :, None, None]).flatten(1))


def test_a_face_grown_for_a_filter_changes_its_part_unless_an_untrained_network_changes_it_too(monkeypatch):
    import fer_lib.data.landmarks as landmarks
    from fer_lib.data.regions import landmark_regions

    points = frontal_points()
    regions = {k: v[0] for k, v in landmark_regions(points[None]).items()}
    monkeypatch.setattr(landmarks, "face_landmarks", lambda images: (points[None], np.array([True])))
    model = MeanNet([regions["mouth"], regions["eyes"], np.ones((48, 48), bool)], [1.0, -1.0, 1.0]).eval()
    start = np.full((48, 48), 0.5)
    grown = grow_faces(model, [0, 1, 2], start, steps=40, seed=0)
    assert grown.shape == (3, 48, 48) and np.sqrt(((grown - start) ** 2).mean((1, 2))).max() <= 0.06 + 1e-6
    assert (grown[0] - start)[regions["mouth"]].mean() > 0 > (grown[1] - start)[regions["eyes"]].mean()
    np.testing.assert_array_equal(grown, grow_faces(model, [0, 1, 2], start, steps=40, seed=0))  # seeded
    untouched = np.broadcast_to(start, grown.shape)  # a control network that changes nothing
    assert growth_parts(start, grown, untouched) == [("mouth", 1), ("eyes", -1), None]  # the whole face: no part
    assert growth_parts(start, grown, grown) == [None, None, None]  # a part the control changes too is not named

