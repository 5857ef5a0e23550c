from eqvlp.cli import DEMO_CAPTIONS, demo_images, main


def test_demo_images_are_distinct_and_in_range():
    images = demo_images(DEMO_CAPTIONS, 32)
    assert images.shape == (len(DEMO_CAPTIONS), 32, 32, 3)
    assert images.min() >= -1.5 and images.max() <= 1.5
    assert abs(images[0, 16, 16, 0] - images[1, 16, 16, 0]) > 1  # red vs green square


def test_demo_runs_and_prints_similarity_matrix(capsys):
    assert main(["demo", "--steps", "30"]) == 0
    out = capsys.readouterr().out
    assert "image -> caption probabilities" in out
    for caption in DEMO_CAPTIONS:
        assert caption in out
    # 30 steps on six separable pairs are enough to match every image to its caption
    assert f"images matched to their own caption: {len(DEMO_CAPTIONS)}/{len(DEMO_CAPTIONS)}" in out
