// The usage panel: GET /usage as the caller sees it. Totals, one row per day and model (figures
// the upstream did not report are estimates, marked ≈), the cost where prices are set, and the
// limits that apply with what is used and left.

import { getUsage } from "./api.js";
import { cell, Panel } from "./panels.js";

const $ = (id) => document.getElementById(id);
const numbers = new Intl.NumberFormat();
const money = new Intl.NumberFormat(undefined, {
  style: "currency", currency: "USD", minimumFractionDigits: 2, maximumFractionDigits: 6,
});
const FIGURES = [
  ["prompt_tokens", "Prompt tokens"],
  ["completion_tokens", "Answer tokens"],
  ["total_tokens", "Total tokens"],
  ["tickets", "Answers"],
];
const SCOPES = { user: "Your limits", key: "This API key's limits" };

export class UsagePanel extends Panel {
  constructor() {
    super("usage-dialog");
    this.totals = $("usage-totals");
    this.days = $("usage-days");
    this.daysTable = $("usage-days-table");
    this.noUsage = $("no-usage");
    this.estimatedNote = $("usage-estimated-note");
    this.limits = $("usage-limits");
  }

  async open() {
    super.open();
    await this.refresh();
  }

  async refresh() {
    this.dialog.setAttribute("aria-busy", "true");
    let usage;
    try {
      usage = await getUsage();
    } catch (error) {
      this.showError(error.message);
      return;
    } finally {
      this.dialog.setAttribute("aria-busy", "false");
    }
    this.#showTotals(usage.totals);
    this.#showDays(usage.by_day, usage.totals.cost !== null && usage.totals.cost !== undefined);
    this.estimatedNote.hidden = !usage.totals.estimated;
    this.#showLimits(usage.limits || {});
    this.dialog.dataset.loaded = "true";
  }

  #showTotals(totals) {
    const items = FIGURES.map(([name, label]) => {
      const estimated = totals.estimated && name !== "tickets";
      return term(label, figure(totals[name], estimated), name);
    });
    if (totals.cost !== null && totals.cost !== undefined) {
      items.push(term("Cost", money.format(totals.cost), "cost"));
    }
    this.totals.replaceChildren(...items.flat());
  }

  #showDays(rows, withCost) {
    $("usage-cost-column").hidden = !withCost;
    this.days.replaceChildren(...rows.map((row) => {
      const item = document.createElement("tr");
      const estimated = row.estimated;
      item.append(
        cell(row.day), cell(row.model),
        cell(figure(row.prompt_tokens, estimated), "number"),
        cell(figure(row.completion_tokens, estimated), "number"),
        cell(figure(row.total_tokens, estimated), "number"),
      );
      if (withCost) item.append(cell(row.cost === null ? "—" : money.format(row.cost), "number"));
      return item;
    }));
    this.daysTable.hidden = !rows.length;
    this.noUsage.hidden = rows.length > 0;
  }

  #showLimits(limits) {
    const sections = Object.entries(SCOPES).filter(([scope]) => limits[scope]).map(([scope, title]) => {
      const limit = limits[scope];
      const rows = [
        limitRow("Tokens today", limit.tokens_per_day, limit.used_today, limit.reserved),
        limitRow("Tokens this month", limit.tokens_per_month, limit.used_this_month, limit.reserved),
        limitRow("Answers generating at once", limit.max_generations, limit.generations, 0, "generating"),
      ];
      const section = document.createElement("section");
      section.className = "usage-scope";
      section.dataset.scope = scope;
      const heading = document.createElement("h4");
      heading.textContent = title;
      const list = document.createElement("dl");
      list.className = "usage-figures";
      list.append(...rows.flat());
      section.append(heading, list);
      return section;
    });
    this.limits.replaceChildren(...sections);
  }
}

// A figure as shown: grouped digits, and "≈" (with words for screen readers) when estimated.
function figure(value, estimated) {
  const text = numbers.format(value ?? 0);
  if (!estimated) return text;
  const span = document.createElement("span");
  span.className = "estimated";
  span.title = "Estimated: the upstream did not report this figure";
  const mark = document.createElement("span");
  mark.setAttribute("aria-hidden", "true");
  mark.textContent = "≈";
  const words = document.createElement("span");
  words.className = "visually-hidden";
  words.textContent = "about ";
  span.append(mark, words, text);
  return span;
}

function term(label, value, name) {
  const dt = document.createElement("dt");
  dt.textContent = label;
  const dd = document.createElement("dd");
  dd.dataset.figure = name;
  dd.append(value);
  return [dt, dd];
}

// "230 of 1,000 used, 40 reserved, 730 left", or "No limit".
function limitRow(label, limit, used, reserved, doing = "used") {
  const name = label.toLowerCase().replaceAll(" ", "-");
  if (limit === null || limit === undefined) return term(label, "No limit", name);
  const left = Math.max(0, limit - used - reserved);
  const parts = [`${numbers.format(used)} of ${numbers.format(limit)} ${doing}`];
  if (reserved) parts.push(`${numbers.format(reserved)} reserved`);
  parts.push(`${numbers.format(left)} left`);
  return term(label, parts.join(", "), name);
}
