// The page's entry: the two views (separate, operator), the API-key dialog, and the parts wired
// together. `window.raydemucs` holds them, so that a test (or a curious person) can read the
// player's state.

import { apiKey, onKeyNeeded } from "./api.js";
import { el } from "./dom.js";
import { OperatorView } from "./operator.js";
import { Player } from "./player.js";
import { TaskList } from "./tasks.js";
import { Uploader } from "./upload.js";

const DASHBOARD_PORT = 8265;  // Ray's default dashboard port

const $ = (selector) => document.querySelector(selector);

function notify(message) {
  const toast = $("#toast");
  toast.textContent = message;
  toast.hidden = false;
  clearTimeout(notify.timer);
  notify.timer = setTimeout(() => { toast.hidden = true; }, 6000);
}

function showError(error) {
  if (error?.name !== "AbortError") notify(error?.message ?? String(error));
}

/** The key dialog: resolves once a key was given (one dialog for every waiting request). */
let asking = null;
function askForKey() {
  asking ??= new Promise((resolve) => {
    const dialog = $("#key-dialog");
    const input = $("#key-input");
    $("#key-reason").replaceChildren(...(apiKey.get() ? ["That key was not accepted: check it and try again."]
      : ["This service needs an API key. Its operator makes one with ",
         el("code", {}, "python -m raydemucs keys add NAME"), "."]));
    input.value = "";
    dialog.showModal();
    dialog.querySelector("form").onsubmit = (event) => {
      event.preventDefault();
      apiKey.set(input.value.trim());
      dialog.close();
      $("#key-button").hidden = false;
      asking = null;
      resolve();
    };
  });
  return asking;
}

function showView() {
  const view = location.hash === "#operator" ? "operator" : "separate";
  for (const name of ["separate", "operator"]) {
    $(`#${name}-view`).hidden = name !== view;
    const tab = $(`nav a[href="#${name}"]`);
    if (name === view) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }
  if (view === "operator") operator.show();
}

function showStatus(status) {
  $('nav a[href="#operator"]').hidden = status.view !== "operator";  // a tenant sees its own counts
  const live = status.workers.filter((worker) => ["idle", "busy"].includes(worker.state)).length;
  $("#service-state").textContent = `${live} worker${live === 1 ? "" : "s"} · ${status.queue.queued} queued`;
  $("#service-state").dataset.state = live ? "ready" : "starting";
}

onKeyNeeded(askForKey);
const player = new Player($("#player"));
const uploader = new Uploader($("#new-task"), { onTask: (task) => tasks.show(task) });
const tasks = new TaskList($("#tasks"), $("#tasks-empty"), $("#live"), {
  onOpen: (task) => player.open(task).catch(showError),
  onError: showError,
});
const operator = new OperatorView($("#operator-view"), { onStatus: showStatus, onError: showError });

$("#key-button").hidden = !apiKey.get();
$("#key-button").addEventListener("click", () => {
  apiKey.clear();
  location.reload();
});
$("#dashboard").href = `${location.protocol}//${location.hostname}:${DASHBOARD_PORT}/`;
window.addEventListener("hashchange", showView);
showView();
uploader.loadModels().catch(showError);
tasks.follow();
operator.follow();
window.raydemucs = { player, tasks, uploader, operator };
