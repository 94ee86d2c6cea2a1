// Who is using the page. GET /auth/me decides between the chat and the sign-in screen; in
// accounts mode the sidebar shows the user's name, Sign out and the API keys (and, for an
// admin, users) panels. In open mode none of that appears and the page is the plain chat.

import { getMe, onSessionLost, signOut } from "./api.js";
import { KeysPanel } from "./keys.js";
import { SignInScreen } from "./signin.js";
import { announce, showToast, ui } from "./ui.js";
import { UsagePanel } from "./usage.js";
import { UsersPanel } from "./users.js";

const $ = (id) => document.getElementById(id);

export class Account {
  // enter() loads the chat for the user now signed in; leave() forgets everything it showed.
  constructor({ enter, leave }) {
    this.enter = enter;
    this.leave = leave;
    this.mode = "open";
    this.user = null;
    this.signIn = new SignInScreen((user) => this.#signedIn(user));
    this.keys = new KeysPanel();
    this.users = new UsersPanel();
    this.usage = new UsagePanel(); // every mode: an anonymous visitor has usage and limits too
    $("open-keys").addEventListener("click", () => this.keys.open());
    $("open-usage").addEventListener("click", () => this.usage.open());
    $("open-users").addEventListener("click", () => this.users.open());
    $("sign-out").addEventListener("click", () => this.#signOut());
    onSessionLost(() => {
      if (!this.signIn.shown) this.#showSignIn({ message: "Your session has ended. Sign in again." });
    });
  }

  async start() {
    let me;
    try {
      me = await getMe();
    } catch (error) {
      if (error.status === 401) {
        this.mode = error.body?.auth || "accounts";
        this.#showSignIn({ setupRequired: Boolean(error.body?.setup_required) });
        return;
      }
      // A relay without /auth/me (404) is an open one; anything else, the chat will report.
      me = { user: null, auth: "open" };
    }
    this.mode = me.auth || "open";
    await this.#showChat(me.user);
  }

  async #signedIn(user) {
    await this.#showChat(user);
    announce(`Signed in as ${user.name}.`);
  }

  async #showChat(user) {
    this.user = user || null;
    $("account").hidden = !this.user;
    $("account-name").textContent = this.user?.name || "";
    $("account-role").hidden = !this.user?.admin;
    $("open-users").hidden = !this.user?.admin;
    $("sign-out").hidden = this.mode === "proxy"; // the proxy signs people in and out
    this.users.setMe(this.user?.name ?? null);
    setScreen("chat");
    await this.enter();
  }

  #showSignIn(options) {
    this.user = null;
    for (const dialog of document.querySelectorAll("dialog[open]")) dialog.close();
    ui.toast.hidden = true;
    this.leave();
    setScreen("signin");
    this.signIn.show(options);
  }

  async #signOut() {
    try {
      await signOut();
    } catch (error) {
      // 401: the session had already ended, which is what the user wanted.
      if (error.status !== 401) {
        showToast(`Could not sign out: ${error.message}`);
        return;
      }
    }
    this.#showSignIn({ message: "You have signed out." });
  }
}

function setScreen(name) {
  document.documentElement.dataset.screen = name;
  ui.app.hidden = name !== "chat";
  $("skip-link").hidden = name !== "chat";
}
