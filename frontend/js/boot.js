// A classic script: if the app's modules never ran (a missing vendor/ folder, an old browser),
// say so instead of showing a page that silently does nothing.
window.addEventListener("load", () => {
  if (document.documentElement.dataset.started) return;
  const toast = document.getElementById("toast");
  toast.textContent = "The chat page's scripts did not load. "
    + "From a checkout, install them with: cd frontend && npm ci";
  toast.hidden = false;
});
