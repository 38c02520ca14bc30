// A small, safe Markdown renderer: it builds DOM nodes and sets only textContent and vetted attributes, so text
// from the model or a user can never become markup. Paragraphs, headings, lists, block quotes, fenced code,
// **bold**, *italic*, `code`, [links](https://...) and bare URLs.

const SAFE_LINK = /^(https?:|mailto:)/i;

function el(tag, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  return node;
}

// Earliest match wins; each alternative is one inline construct.
const INLINE =
  /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)|\*\*(?=\S)([\s\S]*?\S)\*\*|__(?=\S)([\s\S]*?\S)__|\*(?=[^\s*])([\s\S]*?[^\s*])\*|(?<![\w])_(?=[^\s_])([\s\S]*?[^\s_])_(?![\w])|\[([^\]\n]+)\]\(((?:[^()\s]|\([^()\s]*\))+)\)|(https?:\/\/[^\s<>()]+[^\s<>().,;:!?'"])/;

function link(href, text) {
  if (!SAFE_LINK.test(href)) return document.createTextNode(text);
  const a = el("a");
  a.href = href;
  a.textContent = text;
  a.target = "_blank";
  a.rel = "noopener noreferrer";
  return a;
}

export function renderInline(text, parent) {
  let rest = text;
  while (rest) {
    const match = INLINE.exec(rest);
    if (!match) {
      parent.append(rest);
      break;
    }
    if (match.index) parent.append(rest.slice(0, match.index));
    const [whole, , code, bold1, bold2, italic1, italic2, label, href, url] = match;
    if (code !== undefined) {
      const node = el("code");
      node.textContent = code;
      parent.append(node);
    } else if (bold1 !== undefined || bold2 !== undefined) {
      const node = el("strong");
      renderInline(bold1 ?? bold2, node);
      parent.append(node);
    } else if (italic1 !== undefined || italic2 !== undefined) {
      const node = el("em");
      renderInline(italic1 ?? italic2, node);
      parent.append(node);
    } else if (label !== undefined) {
      parent.append(link(href, label));
    } else if (url !== undefined) {
      parent.append(link(url, url));
    }
    rest = rest.slice(match.index + whole.length);
  }
}

function appendLines(parent, lines) {
  lines.forEach((line, index) => {
    if (index) parent.append(el("br"));
    renderInline(line, parent);
  });
}

const LIST_ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;

/** Markdown text as a DocumentFragment of block elements. */
export function renderMarkdown(source) {
  const fragment = document.createDocumentFragment();
  const lines = String(source ?? "").replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) {
      i += 1;
      continue;
    }
    const fence = /^\s*(```|~~~)\s*([\w+-]*)\s*$/.exec(line);
    if (fence) {
      const body = [];
      i += 1;
      while (i < lines.length && !lines[i].trim().startsWith(fence[1])) body.push(lines[i++]);
      i += 1;
      const pre = el("pre");
      const code = el("code");
      if (fence[2]) code.dataset.language = fence[2];
      code.textContent = body.join("\n");
      pre.append(code);
      fragment.append(pre);
      continue;
    }
    const heading = /^(#{1,6})\s+(.*)$/.exec(line);
    if (heading) {
      const node = el(`h${Math.min(heading[1].length + 2, 6)}`, "md-heading");
      renderInline(heading[2].replace(/\s+#+\s*$/, ""), node);
      fragment.append(node);
      i += 1;
      continue;
    }
    if (/^\s*([-*_])(\s*\1){2,}\s*$/.test(line)) {
      fragment.append(el("hr"));
      i += 1;
      continue;
    }
    if (/^\s*>/.test(line)) {
      const quoted = [];
      while (i < lines.length && /^\s*>/.test(lines[i])) quoted.push(lines[i++].replace(/^\s*>\s?/, ""));
      const node = el("blockquote");
      node.append(renderMarkdown(quoted.join("\n")));
      fragment.append(node);
      continue;
    }
    const item = LIST_ITEM.exec(line);
    if (item) {
      const ordered = /\d/.test(item[2]);
      const list = el(ordered ? "ol" : "ul");
      if (ordered && parseInt(item[2], 10) !== 1) list.start = parseInt(item[2], 10);
      let current = null;
      while (i < lines.length) {
        const next = LIST_ITEM.exec(lines[i]);
        if (next && /\d/.test(next[2]) === ordered && next[1].length < 2) {
          current = el("li");
          const task = /^\[([ xX])\]\s+(.*)$/.exec(next[3]);
          if (task) {
            const box = el("input");
            box.type = "checkbox";
            box.disabled = true;
            box.checked = task[1] !== " ";
            current.append(box, " ");
            renderInline(task[2], current);
          } else {
            renderInline(next[3], current);
          }
          list.append(current);
          i += 1;
        } else if (current && lines[i].trim() && /^\s{2,}/.test(lines[i]) && !next) {
          current.append(el("br"));
          renderInline(lines[i].trim(), current);
          i += 1;
        } else if (current && next && next[1].length >= 2) {
          // A nested item: shown as a line of the item it belongs to.
          current.append(el("br"));
          renderInline(`${next[2]} ${next[3]}`, current);
          i += 1;
        } else {
          break;
        }
      }
      fragment.append(list);
      continue;
    }
    const paragraph = [];
    while (
      i < lines.length &&
      lines[i].trim() &&
      !LIST_ITEM.test(lines[i]) &&
      !/^(#{1,6})\s/.test(lines[i]) &&
      !/^\s*(```|~~~|>)/.test(lines[i])
    ) {
      paragraph.push(lines[i++]);
    }
    const p = el("p");
    appendLines(p, paragraph);
    fragment.append(p);
  }
  return fragment;
}
