"""Write a short face video (the astronaut photo that scikit-image ships, moving and zooming)
so that drkit can be tried on a fresh machine with no data: python examples/make_test_video.py OUT.avi"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import face_frames, write_video  # noqa: E402

if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "astronaut.avi")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_video(out, face_frames(100, size=240, seed=0))
    print(out)
