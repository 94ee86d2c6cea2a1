// A classic script: if the app's modules never ran (a broken install, an old browser),
// say so instead of showing a page that silently does nothing.
window.addEventListener("load", () => {
  if (document.documentElement.dataset.started) return;
  const toast = document.getElementById("toast");
  toast.textContent = "The chat page's scripts did not load: "
    + "reinstall relay, or use a browser that supports ES modules.";
  toast.hidden = false;
});
