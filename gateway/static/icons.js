// Line icons (24×24, stroked in currentColor) for the page and for ChatKit's widget icon names. Built with
// createElementNS from fixed path data, never from strings the server sent.

const SVG = "http://www.w3.org/2000/svg";

// Each icon: a list of shapes, [tag, attributes]. "fill" marks a shape filled instead of stroked.
const C = (cx, cy, r, extra = {}) => ["circle", { cx, cy, r, ...extra }];
const P = (d, extra = {}) => ["path", { d, ...extra }];
const R = (x, y, width, height, rx = 2, extra = {}) => ["rect", { x, y, width, height, rx, ...extra }];

const ICONS = {
  check: [P("M5 12.5l4.5 4.5L19 7.5")],
  "check-circle": [C(12, 12, 9), P("M8 12.5l3 3 5-6")],
  "check-circle-filled": [C(12, 12, 9.5, { fill: "currentColor", stroke: "none" }), P("M8 12.5l3 3 5-6", { class: "on-fill" })],
  "empty-circle": [C(12, 12, 8.5)],
  plus: [P("M12 5v14M5 12h14")],
  "arrow-up": [P("M12 19V5M5.5 11.5L12 5l6.5 6.5")],
  "arrow-right": [P("M5 12h14M13 5.5l6.5 6.5-6.5 6.5")],
  stop: [R(7, 7, 10, 10, 2, { fill: "currentColor", stroke: "none" })],
  paperclip: [P("M20.5 11.5l-8.2 8.2a5 5 0 0 1-7.1-7.1l8.6-8.6a3.3 3.3 0 0 1 4.7 4.7l-8.6 8.6a1.7 1.7 0 0 1-2.4-2.4l7.9-7.9")],
  "thumbs-up": [P("M7 10.5V20M7 10.5l3.6-7a2.2 2.2 0 0 1 3.9 1.8L13.6 9h5.2a2 2 0 0 1 2 2.4l-1.3 6.8a2.2 2.2 0 0 1-2.2 1.8H4.5a1 1 0 0 1-1-1v-7.5a1 1 0 0 1 1-1H7")],
  "thumbs-down": [P("M17 13.5V4M17 13.5l-3.6 7a2.2 2.2 0 0 1-3.9-1.8l.9-3.7H5.2a2 2 0 0 1-2-2.4l1.3-6.8A2.2 2.2 0 0 1 6.7 4h12.8a1 1 0 0 1 1 1v7.5a1 1 0 0 1-1 1H17")],
  copy: [R(8.5, 8.5, 11.5, 11.5, 2.5), P("M15.5 8.5V6a2 2 0 0 0-2-2H6a2 2 0 0 0-2 2v7.5a2 2 0 0 0 2 2h2.5")],
  menu: [P("M4 6.5h16M4 12h16M4 17.5h16")],
  x: [P("M6 6l12 12M18 6L6 18")],
  "book-open": [P("M12 6.5C10.5 5 8 4.5 3.5 4.5v14c4.5 0 7 .5 8.5 2 1.5-1.5 4-2 8.5-2v-14c-4.5 0-7 .5-8.5 2zM12 6.5v14")],
  write: [P("M4 20h4L19 9a2.8 2.8 0 0 0-4-4L4 16z"), P("M13.5 6.5l4 4")],
  "edit": [P("M4 20h4L19 9a2.8 2.8 0 0 0-4-4L4 16z"), P("M13.5 6.5l4 4")],
  search: [C(10.5, 10.5, 6.5), P("M15.5 15.5L20 20")],
  agent: [R(4.5, 7.5, 15, 11, 3), P("M12 7.5V4.5M9 12.5v1M15 12.5v1"), C(12, 3.8, 0.8)],
  robot: [R(4.5, 7.5, 15, 11, 3), P("M12 7.5V4.5M9 12.5v1M15 12.5v1")],
  clock: [C(12, 12, 8.5), P("M12 7.5V12l3 2")],
  calendar: [R(3.5, 5, 17, 15, 2.5), P("M3.5 10h17M8 3v4M16 3v4")],
  "calendar-days": [R(3.5, 5, 17, 15, 2.5), P("M3.5 10h17M8 3v4M16 3v4M8 14h.01M12 14h.01M16 14h.01")],
  star: [P("M12 3.5l2.6 5.4 5.9.8-4.3 4.1 1 5.8L12 16.8l-5.2 2.8 1-5.8-4.3-4.1 5.9-.8z")],
  "star-filled": [P("M12 3.5l2.6 5.4 5.9.8-4.3 4.1 1 5.8L12 16.8l-5.2 2.8 1-5.8-4.3-4.1 5.9-.8z", { fill: "currentColor" })],
  info: [C(12, 12, 8.5), P("M12 11v5.5M12 7.8v.2")],
  "circle-question": [C(12, 12, 8.5), P("M9.7 9.5a2.4 2.4 0 0 1 4.6 1c0 1.6-2.3 2-2.3 3.3M12 16.8v.2")],
  warning: [P("M12 4L2.8 19.5h18.4z"), P("M12 10v4.5M12 17v.2")],
  "alert-triangle": [P("M12 4L2.8 19.5h18.4z"), P("M12 10v4.5M12 17v.2")],
  "alert-circle": [C(12, 12, 8.5), P("M12 7.8V13M12 16v.2")],
  bolt: [P("M13 3L5 13.5h6L10.5 21 19 10.5h-6z")],
  sparkle: [P("M12 3.5l1.8 5.2 5.2 1.8-5.2 1.8-1.8 5.2-1.8-5.2-5.2-1.8 5.2-1.8z")],
  lightbulb: [P("M9 17.5h6M10 20.5h4M12 3.5a6 6 0 0 0-3.5 10.9c.6.5 1 1.2 1 2V17h5v-.6c0-.8.4-1.5 1-2A6 6 0 0 0 12 3.5z")],
  document: [P("M6.5 3.5h7l4.5 4.5v12.5h-11.5z"), P("M13.5 3.5V8H18M9 12.5h6M9 16h6")],
  "page-blank": [P("M6.5 3.5h7l4.5 4.5v12.5h-11.5z"), P("M13.5 3.5V8H18")],
  notebook: [R(5, 3.5, 14, 17, 2), P("M9 3.5v17M12 8h4M12 11.5h4")],
  user: [C(12, 8.5, 4), P("M4.5 20.5c.8-3.8 3.8-6 7.5-6s6.7 2.2 7.5 6")],
  profile: [C(12, 8.5, 4), P("M4.5 20.5c.8-3.8 3.8-6 7.5-6s6.7 2.2 7.5 6")],
  mail: [R(3.5, 5.5, 17, 13, 2), P("M4 7l8 6 8-6")],
  phone: [P("M6.5 3.5h3l1.5 4.5-2 1.5a11 11 0 0 0 5.5 5.5l1.5-2 4.5 1.5v3a2 2 0 0 1-2 2A16 16 0 0 1 4.5 5.5a2 2 0 0 1 2-2z")],
  globe: [C(12, 12, 8.5), P("M3.5 12h17M12 3.5c2.5 2.5 3.5 5.5 3.5 8.5s-1 6-3.5 8.5c-2.5-2.5-3.5-5.5-3.5-8.5s1-6 3.5-8.5z")],
  chart: [P("M4 20h16M7 16.5v-5M12 16.5v-9M17 16.5v-3")],
  trash: [P("M4.5 7h15M9.5 7V4.5h5V7M6.5 7l1 13h9l1-13")],
  lock: [R(5, 10.5, 14, 10, 2), P("M8 10.5V8a4 4 0 0 1 8 0v2.5")],
  home: [P("M4 11l8-7 8 7v9h-5.5v-5.5h-5V20H4z")],
  "map-pin": [P("M12 21s-6.5-5.8-6.5-11a6.5 6.5 0 0 1 13 0c0 5.2-6.5 11-6.5 11z"), C(12, 10, 2.3)],
  compass: [C(12, 12, 8.5), P("M15.5 8.5l-2 5-5 2 2-5z")],
  bug: [R(7.5, 7.5, 9, 12, 4.5), P("M12 11v8.5M4 10.5l3.5 1.5M20 10.5L16.5 12M4 17h3.5M20 17h-3.5M9 7.5a3 3 0 0 1 6 0")],
  cube: [P("M12 3.5l7.5 4.2v8.6L12 20.5l-7.5-4.2V7.7z"), P("M4.5 7.7L12 12l7.5-4.3M12 12v8.5")],
  keys: [C(8, 15, 3.5), P("M10.5 12.5L19 4M16 7l2.5 2.5")],
  "square-code": [R(3.5, 3.5, 17, 17, 3), P("M10 9l-3 3 3 3M14 9l3 3-3 3")],
  images: [R(3.5, 5, 17, 14, 2), C(9, 10, 1.6), P("M20.5 16l-5-5-8 8")],
  settings: [C(12, 12, 3), P("M12 2.5v3M12 18.5v3M21.5 12h-3M5.5 12h-3M18.7 5.3l-2.1 2.1M7.4 16.6l-2.1 2.1M18.7 18.7l-2.1-2.1M7.4 7.4L5.3 5.3")],
  "dots-horizontal": [C(6, 12, 1.2, { fill: "currentColor" }), C(12, 12, 1.2, { fill: "currentColor" }), C(18, 12, 1.2, { fill: "currentColor" })],
  "chevron-left": [P("M14.5 6l-6 6 6 6")],
  "chevron-right": [P("M9.5 6l6 6-6 6")],
  "external-link": [P("M13.5 4.5h6v6M19.5 4.5L11 13M18 14v5.5H4.5V6H10")],
  "sign-out": [P("M14.5 4.5h4.5v15h-4.5M10 8l-4 4 4 4M6 12h9.5")],
  chat: [P("M4.5 5.5h15v10h-9l-4.5 4v-4h-1.5z")],
  flag: [P("M5.5 21V4M5.5 4.5h11l-2 4 2 4h-11")],
  bookmark: [P("M6.5 3.5h11v17l-5.5-4-5.5 4z")],
};

const DEFAULT_ICON = [C(12, 12, 3, { fill: "currentColor", stroke: "none" })];

/** The SVG for `name` (ChatKit IconName or one of the page's own); an unknown name gets a neutral dot. */
export function icon(name, { size = 18, label } = {}) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("width", String(size));
  svg.setAttribute("height", String(size));
  svg.setAttribute("fill", "none");
  svg.setAttribute("stroke", "currentColor");
  svg.setAttribute("stroke-width", "1.8");
  svg.setAttribute("stroke-linecap", "round");
  svg.setAttribute("stroke-linejoin", "round");
  svg.classList.add("icon");
  if (label) {
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", label);
  } else {
    svg.setAttribute("aria-hidden", "true");
  }
  const key = String(name || "").replace(/^(lucide|vendor):/, "");
  for (const [tag, attributes] of ICONS[key] || DEFAULT_ICON) {
    const shape = document.createElementNS(SVG, tag);
    for (const [attribute, value] of Object.entries(attributes)) shape.setAttribute(attribute, String(value));
    svg.append(shape);
  }
  return svg;
}
