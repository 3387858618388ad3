"""A task as clients outside the cluster see it (HTTP answers, event streams, webhook bodies):
no server paths, stems as URLs, and the separation options a client may set. Free of FastAPI:
the scheduler builds webhook bodies with it."""
from __future__ import annotations

# the separation options a client may set over HTTP, and its view shows
OPTION_FIELDS = ("model", "two_stems", "shifts", "overlap", "segment", "format", "wav_depth",
                 "mp3_bitrate", "mp3_preset", "clip_mode", "device", "precision")
PUBLIC = ("task_id", "project", "file_id", "state", "priority", "attempts", "progress", "error",
          "queue_position", "submitted_at", "started_at", "finished_at", "queue_wait_s", "run_s",
          "audio_duration_s", "expired_at")


def public_task(view: dict, base: str) -> dict:
    """`view` (a task's record or view) as the API at `base` shows it; its webhook deliveries
    when the view lists them."""
    data = {key: view.get(key) for key in PUBLIC}
    spec = view["spec"]
    options = spec["options"]
    data["model"] = options["model"]
    data["batch_id"] = spec.get("batch_id")
    data["options"] = {key: options[key] for key in OPTION_FIELDS if key != "model"}
    url = f"{base}/v1/tasks/{view['task_id']}"
    data["outputs"] = ({stem: f"{url}/stems/{stem}" for stem in view["outputs"]}
                       if view.get("outputs") else None)
    data["links"] = {"self": url, "events": f"{url}/events",
                     "zip": f"{url}/stems.zip" if view.get("outputs") else None}
    data["webhook"] = ({"url": spec["webhook_url"], "events": list(spec["webhook_events"])}
                       if spec.get("webhook_url") else None)
    if "deliveries" in view:
        data["deliveries"] = view["deliveries"]
    return data
