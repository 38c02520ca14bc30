// ChatKit widgets (chatkit.widgets / the ChatKit JS widget reference) as DOM. Every value lands in textContent
// or a vetted style property; unknown components show their children, or a short note.

import { icon } from "./icons.js";
import { renderMarkdown } from "./markdown.js";

const NAMED_COLORS = new Set([
  "prose", "primary", "emphasis", "secondary", "tertiary", "success", "warning", "danger", "info",
  "discovery", "caution", "white", "black",
]);
const RADII = { none: "0", "2xs": "2px", xs: "4px", sm: "6px", md: "8px", lg: "12px", xl: "16px", "2xl": "20px", "3xl": "24px", "4xl": "32px", full: "9999px" };
const ALIGN = { start: "flex-start", end: "flex-end", center: "center", baseline: "baseline", stretch: "stretch" };
const JUSTIFY = { ...ALIGN, between: "space-between", around: "space-around", evenly: "space-evenly" };

function el(tag, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  return node;
}

/** A ChatKit color (a theme name, {light, dark}, or a CSS color) as a CSS value, or null if unusable. */
function color(value) {
  if (!value) return null;
  if (typeof value === "object") {
    const dark = window.matchMedia?.("(prefers-color-scheme: dark)").matches;
    return color(dark ? value.dark ?? value.light : value.light ?? value.dark);
  }
  const name = String(value);
  if (NAMED_COLORS.has(name)) return `var(--w-${name})`;
  const alpha = /^alpha-(\d{1,3})$/.exec(name);
  if (alpha) return `color-mix(in srgb, var(--text) ${Math.min(100, Number(alpha[1]))}%, transparent)`;
  return CSS.supports("color", name) ? name : null;
}

function background(value) {
  if (typeof value === "string" && NAMED_COLORS.has(value)) return `var(--wb-${value})`;
  return color(value);
}

// Spacing numbers are steps of 4 px, as in ChatKit; strings are CSS lengths.
function space(value) {
  if (typeof value === "number" && Number.isFinite(value)) return `${value * 4}px`;
  if (typeof value === "string" && CSS.supports("padding", value)) return value;
  return null;
}

function size(value) {
  if (typeof value === "number" && Number.isFinite(value)) return `${value}px`;
  if (typeof value === "string" && CSS.supports("width", value)) return value;
  return null;
}

function applySpacing(node, property, value) {
  if (value == null) return;
  if (typeof value === "object") {
    const { x, y, top = y, bottom = y, left = x, right = x } = value;
    for (const [side, v] of Object.entries({ Top: top, Bottom: bottom, Left: left, Right: right })) {
      const css = space(v);
      if (css) node.style[`${property}${side}`] = css;
    }
    return;
  }
  const css = space(value);
  if (css) node.style[property] = css;
}

function applyBorder(node, value) {
  if (value == null) return;
  const one = (spec) => {
    if (typeof spec === "number") return `${spec}px solid var(--border)`;
    if (spec && typeof spec === "object") {
      const width = typeof spec.size === "number" ? spec.size : 1;
      const style = ["solid", "dashed", "dotted", "double"].includes(spec.style) ? spec.style : "solid";
      return `${width}px ${style} ${color(spec.color) || "var(--border)"}`;
    }
    return null;
  };
  if (typeof value === "object" && ["top", "right", "bottom", "left", "x", "y"].some((k) => k in value)) {
    const { x, y, top = y, bottom = y, left = x, right = x } = value;
    for (const [side, v] of Object.entries({ Top: top, Bottom: bottom, Left: left, Right: right })) {
      const css = v != null && one(v);
      if (css) node.style[`border${side}`] = css;
    }
  } else {
    const css = one(value);
    if (css) node.style.border = css;
  }
}

function applyBox(node, props) {
  if (props.gap != null) node.style.gap = space(props.gap) || "";
  applySpacing(node, "padding", props.padding);
  applySpacing(node, "margin", props.margin);
  if (props.align) node.style.alignItems = ALIGN[props.align] || "";
  if (props.justify) node.style.justifyContent = JUSTIFY[props.justify] || "";
  if (props.wrap) node.style.flexWrap = props.wrap === true ? "wrap" : String(props.wrap);
  if (props.flex != null) node.style.flex = typeof props.flex === "number" ? String(props.flex) : String(props.flex);
  const bg = background(props.background);
  if (bg) node.style.background = bg;
  applyBorder(node, props.border);
  if (props.radius) node.style.borderRadius = RADII[props.radius] || size(props.radius) || "";
  for (const key of ["width", "height", "minWidth", "maxWidth", "minHeight", "maxHeight"]) {
    const css = size(props[key]);
    if (css) node.style[key] = css;
  }
  if (props.size) {
    const css = size(props.size);
    if (css) node.style.width = node.style.height = css;
  }
  if (props.aspectRatio) node.style.aspectRatio = String(props.aspectRatio);
}

function applyText(node, props, kind) {
  node.classList.add(`w-${kind}`);
  if (props.size) node.dataset.size = props.size;
  if (props.weight) node.dataset.weight = props.weight;
  const fg = color(props.color);
  if (fg) node.style.color = fg;
  if (props.italic) node.style.fontStyle = "italic";
  if (props.lineThrough) node.style.textDecoration = "line-through";
  if (props.textAlign) node.style.textAlign = props.textAlign;
  if (props.truncate) node.classList.add("w-truncate");
  if (props.maxLines) {
    node.classList.add("w-clamp");
    node.style.webkitLineClamp = String(props.maxLines);
  }
}

function status(statusValue) {
  if (!statusValue || !statusValue.text) return null;
  const header = el("div", "w-status");
  if (statusValue.icon) header.append(icon(statusValue.icon, { size: 15 }));
  else if (statusValue.favicon && /^(https?:|data:image\/)/.test(statusValue.favicon)) {
    const img = el("img", "w-favicon");
    img.src = statusValue.favicon;
    img.alt = "";
    header.append(img);
  }
  const text = el("span");
  text.textContent = statusValue.text;
  header.append(text);
  return header;
}

function bindAction(node, action, ctx) {
  node.addEventListener("click", (event) => {
    event.stopPropagation();
    ctx.onAction(action, node);
  });
}

function children(parent, list, ctx) {
  for (const child of Array.isArray(list) ? list : []) {
    const rendered = renderComponent(child, ctx);
    if (rendered) parent.append(rendered);
  }
}

function button(props, ctx) {
  const node = el("button", "w-button");
  node.type = props.submit ? "submit" : "button";
  node.dataset.testid = "widget-button";
  node.dataset.style = props.style === "secondary" ? "secondary" : "primary";
  node.dataset.variant = props.variant || "solid";
  node.dataset.size = props.size || "md";
  if (props.pill) node.classList.add("w-pill");
  if (props.block) node.classList.add("w-block");
  const fg = props.color && color(props.color);
  if (fg) node.style.setProperty("--w-button-color", fg);
  if (props.iconStart) node.append(icon(props.iconStart, { size: 16 }));
  if (props.label) {
    const label = el("span");
    label.textContent = props.label;
    node.append(label);
  }
  if (props.iconEnd) node.append(icon(props.iconEnd, { size: 16 }));
  if (!props.label) node.setAttribute("aria-label", props.iconStart || props.iconEnd || "button");
  node.disabled = Boolean(props.disabled);
  if (props.onClickAction && !props.submit) bindAction(node, props.onClickAction, ctx);
  return node;
}

function listItem(props, ctx) {
  const node = el("div", "w-listitem");
  node.dataset.testid = "list-item";
  // A row keeps its key when its widget is redrawn: the keyboard stays on the same row (app.js, upsertItem).
  if (props.key != null) node.dataset.key = String(props.key);
  node.setAttribute("role", "listitem");
  const body = el("div", "w-listitem-body w-row");
  applyBox(body, { gap: props.gap ?? 2, align: props.align ?? "center" });
  children(body, props.children, ctx);
  node.append(body);
  if (props.onClickAction) {
    // The whole row is one control: focusable, announced as a button, Enter or Space activates it.
    node.dataset.clickable = "true";
    node.setAttribute("role", "button");
    node.tabIndex = 0;
    node.addEventListener("click", () => ctx.onAction(props.onClickAction, node));
    node.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        ctx.onAction(props.onClickAction, node);
      }
    });
  }
  return node;
}

function form(props, ctx, tag = "form") {
  const node = el(tag, "w-form w-col");
  applyBox(node, props);
  children(node, props.children, ctx);
  const action = props.onSubmitAction || props.action;
  node.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!action) return;
    const values = {};
    for (const [key, value] of new FormData(node)) values[key] = value;
    ctx.onAction({ ...action, payload: { ...(action.payload || {}), ...values } }, node);
  });
  return node;
}

function control(props, type) {
  let node;
  if (type === "Textarea") {
    node = el("textarea", "w-input");
    node.rows = props.rows || 3;
  } else if (type === "Select") {
    node = el("select", "w-input");
    for (const option of props.options || []) {
      const opt = el("option");
      opt.value = String(option.value ?? "");
      opt.textContent = String(option.label ?? option.value ?? "");
      node.append(opt);
    }
  } else {
    node = el("input", "w-input");
    node.type = type === "Checkbox" ? "checkbox" : type === "DatePicker" ? "date" : props.inputType || "text";
    if (type === "Checkbox") node.checked = Boolean(props.defaultChecked);
  }
  if (props.name) node.name = props.name;
  if (props.placeholder) node.placeholder = props.placeholder;
  if (props.defaultValue != null && type !== "Checkbox") node.value = String(props.defaultValue);
  if (props.required) node.required = true;
  if (props.disabled) node.disabled = true;
  if (type === "Checkbox" && props.label) {
    const wrap = el("label", "w-checkbox");
    const text = el("span");
    text.textContent = props.label;
    wrap.append(node, text);
    return wrap;
  }
  return node;
}

function image(props) {
  const src = String(props.src || "");
  if (!/^(https?:|data:image\/|blob:|\/)/.test(src)) return null;
  const node = el("img", "w-image");
  node.src = src;
  node.alt = props.alt || "";
  node.loading = "lazy";
  if (props.fit) node.style.objectFit = props.fit;
  if (props.radius) node.style.borderRadius = RADII[props.radius] || "";
  for (const key of ["width", "height", "size"]) {
    const css = size(props[key]);
    if (css) {
      if (key === "size") node.style.width = node.style.height = css;
      else node.style[key] = css;
    }
  }
  if (props.aspectRatio) node.style.aspectRatio = String(props.aspectRatio);
  if (props.frame) node.classList.add("w-frame");
  return node;
}

/** One widget component as a DOM node (null for nothing to show). */
export function renderComponent(props, ctx) {
  if (!props || typeof props !== "object") return null;
  let node;
  switch (props.type) {
    case "Card":
      return card(props, ctx);
    case "ListView":
      return listView(props, ctx);
    case "ListViewItem":
      return listItem(props, ctx);
    case "Basic":
    case "Box":
    case "Row":
    case "Col":
    case "Transition": {
      const row = props.type === "Row" || (props.type === "Box" && props.direction === "row");
      node = el("div", row ? "w-row" : "w-col");
      applyBox(node, props);
      children(node, props.children, ctx);
      return node;
    }
    case "Form":
      return form(props, ctx);
    case "Text":
      node = el(props.value && String(props.value).includes("\n") ? "p" : "span");
      node.textContent = String(props.value ?? "");
      applyText(node, props, "text");
      return node;
    case "Title":
      node = el("div");
      node.setAttribute("role", "heading");
      node.setAttribute("aria-level", "3");
      node.textContent = String(props.value ?? "");
      applyText(node, props, "title");
      return node;
    case "Caption":
      node = el("span");
      node.textContent = String(props.value ?? "");
      applyText(node, props, "caption");
      return node;
    case "Label":
      node = el("label", "w-label");
      node.textContent = String(props.value ?? "");
      if (props.fieldName) node.htmlFor = `w-${props.fieldName}`;
      return node;
    case "Markdown":
      node = el("div", "w-markdown md");
      node.append(renderMarkdown(props.value));
      return node;
    case "Badge":
      node = el("span", "w-badge");
      node.textContent = String(props.label ?? "");
      node.dataset.color = NAMED_COLORS.has(props.color) ? props.color : "secondary";
      node.dataset.variant = props.variant || "soft";
      if (props.pill) node.classList.add("w-pill");
      if (props.size) node.dataset.size = props.size;
      return node;
    case "Button":
      return button(props, ctx);
    case "Divider":
      node = el("hr", "w-divider");
      if (props.spacing != null) node.style.margin = `${space(props.spacing) || "8px"} 0`;
      if (props.color) node.style.borderColor = color(props.color) || "";
      return node;
    case "Spacer":
      node = el("div", "w-spacer");
      if (props.minSize != null) node.style.minWidth = node.style.minHeight = size(props.minSize) || "";
      return node;
    case "Icon": {
      const px = { xs: 12, sm: 14, md: 16, lg: 18, xl: 20, "2xl": 24, "3xl": 28 }[props.size] || 18;
      node = icon(props.name, { size: px });
      node.classList.add("w-icon");
      const fg = color(props.color);
      if (fg) node.style.color = fg;
      return node;
    }
    case "Image":
      return image(props);
    case "Input":
    case "Textarea":
    case "Select":
    case "Checkbox":
    case "DatePicker":
      return control(props, props.type);
    case "RadioGroup": {
      node = el("div", "w-row");
      node.setAttribute("role", "radiogroup");
      for (const option of props.options || []) {
        const wrap = el("label", "w-checkbox");
        const input = el("input");
        input.type = "radio";
        input.name = props.name || "choice";
        input.value = String(option.value ?? "");
        input.checked = option.value === props.defaultValue;
        const text = el("span");
        text.textContent = String(option.label ?? option.value ?? "");
        wrap.append(input, text);
        node.append(wrap);
      }
      return node;
    }
    default:
      if (Array.isArray(props.children)) {
        node = el("div", "w-col");
        children(node, props.children, ctx);
        return node;
      }
      node = el("span", "w-caption w-unknown");
      node.textContent = `[${String(props.type || "component")}]`;
      return node;
  }
}

function card(props, ctx) {
  const asForm = Boolean(props.asForm);
  const node = asForm ? form({ ...props, children: [] }, ctx) : el("div");
  node.classList.add("w-card");
  node.classList.remove("w-col");
  node.dataset.size = props.size || "md";
  const header = status(props.status);
  if (header) node.append(header);
  const body = el("div", "w-card-body w-col");
  applyBox(body, { gap: props.gap ?? 3, padding: props.padding ?? 4 });
  const bg = background(props.background);
  if (bg) node.style.background = bg;
  children(body, props.children, ctx);
  if (props.collapsed) body.hidden = true;
  node.append(body);
  if (props.confirm || props.cancel) {
    const footer = el("div", "w-card-actions");
    if (props.cancel) footer.append(button({ label: props.cancel.label, style: "secondary", onClickAction: props.cancel.action }, ctx));
    if (props.confirm) footer.append(button({ label: props.confirm.label, style: "primary", onClickAction: props.confirm.action }, ctx));
    node.append(footer);
  }
  return node;
}

function listView(props, ctx) {
  const node = el("div", "w-listview");
  const header = status(props.status);
  if (header) node.append(header);
  const list = el("div", "w-list");
  list.setAttribute("role", "list");
  const items = Array.isArray(props.children) ? props.children : [];
  const limit = typeof props.limit === "number" ? props.limit : items.length;
  children(list, items.slice(0, limit), ctx);
  listRoles(list);
  node.append(list);
  if (items.length > limit) {
    const more = el("button", "w-more");
    more.type = "button";
    more.textContent = `Show ${items.length - limit} more`;
    more.addEventListener("click", () => {
      children(list, items.slice(limit), ctx);
      listRoles(list);
      more.remove();
    });
    node.append(more);
  }
  return node;
}

/** A list of rows that are buttons is a group of buttons (a list may only hold list items); its rows that are not
 * buttons (a note, a footer) are then plain. */
function listRoles(list) {
  const rows = [...list.children];
  if (!rows.some((row) => row.getAttribute("role") === "button")) return;
  list.setAttribute("role", "group");
  for (const row of rows) if (row.getAttribute("role") === "listitem") row.removeAttribute("role");
}

/** A widget item's root, wrapped as the conversation shows it. */
export function renderWidget(root, ctx) {
  const wrap = el("div", "widget");
  wrap.dataset.testid = "widget";
  wrap.dataset.widgetType = root?.type || "unknown";
  const rendered = renderComponent(root, ctx);
  if (rendered) wrap.append(rendered);
  return wrap;
}

/** The component with `id` inside a widget tree, for streamed updates. */
export function findComponent(root, id) {
  if (!root || typeof root !== "object") return null;
  if (root.id === id) return root;
  for (const child of Array.isArray(root.children) ? root.children : []) {
    const found = findComponent(child, id);
    if (found) return found;
  }
  return null;
}
