"""Finding video files: files, folders of them (not recursive) and ``.txt`` lists (one path a
line, relative to the list's folder; ``#`` comments)."""
from __future__ import annotations

import os
from typing import List, Sequence, Tuple

__all__ = ["VIDEO_EXTENSIONS", "find_videos", "is_video_file", "split_video_inputs"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv",
                    ".flv", ".ts")


def is_video_file(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS


def _list_file(path: str) -> List[str]:
    folder = os.path.dirname(path)
    with open(path, "r", encoding="utf8") as f:
        lines = [line.split("#")[0].strip() for line in f]
    return [os.path.join(folder, line) for line in lines if line]


def find_videos(paths: Sequence[str]) -> Tuple[List[Tuple[str, str]], List[str]]:
    """``(video_id, path)`` pairs in argument order (folders sorted by name), and problems as
    one-line messages. The video id is the file name without its extension; a repeated id is a
    problem (the first is kept)."""
    found: List[str] = []
    problems: List[str] = []
    for path in paths:
        if os.path.isdir(path):
            names = sorted(n for n in os.listdir(path) if is_video_file(n))
            if not names:
                problems.append(f"{path}: no video files ({', '.join(VIDEO_EXTENSIONS)}) in this "
                                f"folder")
            found += [os.path.join(path, n) for n in names]
        elif path.lower().endswith(".txt") and os.path.isfile(path):
            found += _list_file(path)
        else:
            found.append(path)      # missing / unreadable files fail when opened, one line each
    videos: List[Tuple[str, str]] = []
    seen = {}
    for path in found:
        video_id = os.path.splitext(os.path.basename(path))[0]
        if video_id in seen:
            problems.append(f"{path}: video id '{video_id}' also names {seen[video_id]}; skipped")
            continue
        seen[video_id] = path
        videos.append((video_id, path))
    return videos, problems


def split_video_inputs(paths: Sequence[str]) -> Tuple[List[Tuple[str, str]], List[str], List[str]]:
    """Separate video inputs from feature inputs: ``(videos as in find_videos, other paths,
    problems)``. A folder holding video files contributes them; it is kept among the other
    paths too when it also holds other files (features), or when it holds no video."""
    video_paths: List[str] = []
    others: List[str] = []
    for path in paths:
        if os.path.isdir(path):
            names = os.listdir(path)
            videos = sorted(os.path.join(path, n) for n in names if is_video_file(n))
            video_paths += videos
            if len(videos) < len([n for n in names if not n.startswith(".")]):
                others.append(path)
        elif is_video_file(path):
            video_paths.append(path)
        else:
            others.append(path)
    videos, problems = find_videos(video_paths) if video_paths else ([], [])
    return videos, others, problems
