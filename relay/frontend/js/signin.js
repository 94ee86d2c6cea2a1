// The sign-in screen of accounts mode, which doubles as "create the first admin account" on a
// relay nobody has set up yet.

import { setUp, signIn } from "./api.js";
import { whileBusy } from "./panels.js";

const $ = (id) => document.getElementById(id);

export class SignInScreen {
  // onSignedIn(user) runs after a successful sign-in or setup.
  constructor(onSignedIn) {
    this.onSignedIn = onSignedIn;
    this.screen = $("signin");
    this.form = $("signin-form");
    this.username = $("signin-username");
    this.password = $("signin-password");
    this.error = $("signin-error");
    this.status = $("signin-status");
    this.setupRequired = false;
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.#submit();
    });
  }

  get shown() {
    return !this.screen.hidden;
  }

  // `message` says why the screen is back (signed out, session ended), for everyone to read.
  show({ setupRequired = false, message = "" } = {}) {
    this.#setMode(setupRequired);
    this.password.value = "";
    this.error.textContent = "";
    this.status.textContent = message;
    this.screen.hidden = false;
    document.title = setupRequired ? "Set up relay" : "Sign in · relay";
    this.username.focus();
  }

  hide() {
    this.screen.hidden = true;
    this.form.reset();
    this.error.textContent = "";
    this.status.textContent = "";
  }

  #setMode(setupRequired) {
    this.setupRequired = setupRequired;
    $("signin-title").textContent = setupRequired ? "Create the first admin account" : "Sign in to relay";
    $("signin-intro").hidden = !setupRequired;
    $("signin-submit").textContent = setupRequired ? "Create account" : "Sign in";
    this.password.autocomplete = setupRequired ? "new-password" : "current-password";
  }

  async #submit() {
    this.error.textContent = "";
    const username = this.username.value.trim();
    const password = this.password.value;
    const send = this.setupRequired ? setUp : signIn;
    let answer;
    try {
      answer = await whileBusy(this.form, () => send(username, password));
    } catch (error) {
      this.#failed(error);
      return;
    }
    this.hide();
    this.onSignedIn(answer.user);
  }

  #failed(error) {
    if (error.code === "already_set_up") {
      this.#setMode(false);
      this.status.textContent = "This relay already has an administrator. Sign in instead.";
      this.password.value = "";
      this.username.focus();
      return;
    }
    this.error.textContent = failureText(error);
    if (error.code === "invalid_credentials") {
      this.password.value = "";
      this.password.focus();
    }
  }
}

function failureText(error) {
  if (error.code === "invalid_credentials") return "Wrong username or password.";
  if (error.code === "rate_limited") return `Too many sign-in attempts. ${retryText(error.retryAfter)}`;
  return error.message;
}

function retryText(seconds) {
  if (seconds === null) return "Wait a while, then try again.";
  if (seconds <= 1) return "Try again in a second.";
  if (seconds < 60) return `Try again in ${seconds} seconds.`;
  const minutes = Math.ceil(seconds / 60);
  return `Try again in ${minutes} minute${minutes === 1 ? "" : "s"}.`;
}
