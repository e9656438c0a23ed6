import type { List, PhrasingContent, RootContent } from "mdast";
import { fromMarkdown } from "mdast-util-from-markdown";
import { frontmatterFromMarkdown } from "mdast-util-frontmatter";
import { frontmatter } from "micromark-extension-frontmatter";
import { parse as parseYaml } from "yaml";
import { HeadingStack, TextAssembler } from "./assemble.js";
import { decodeUtf8 } from "./text.js";
import type { Extracted } from "./types.js";

// CommonMark via micromark (the parser behind remark), so what counts as a heading, a list or
// a code block is what every Markdown renderer agrees on, not a regular expression's guess.
const FRONT_MATTER = ["yaml", "toml"] as const;

/**
 * Markdown as readable prose: headings, paragraphs, list items (one per line) and code blocks
 * as text; link, emphasis and image syntax reduced to the words a reader sees; front matter
 * dropped (its YAML `title` becomes the title, else the first h1); raw HTML blocks dropped.
 */
export function extractMarkdown(bytes: Uint8Array): Extracted {
  const tree = fromMarkdown(decodeUtf8(bytes, "Markdown"), {
    extensions: [frontmatter([...FRONT_MATTER])],
    mdastExtensions: [frontmatterFromMarkdown([...FRONT_MATTER])],
  });
  const out = new TextAssembler("markdown");
  const headings = new HeadingStack();
  let path: readonly string[] = [];
  let title: string | undefined;
  let firstH1: string | undefined;

  const block = (node: RootContent): void => {
    switch (node.type) {
      case "yaml":
        title = frontMatterTitle(node.value);
        return;
      case "heading": {
        const text = inline(node.children);
        if (text.trim() === "") return;
        path = headings.enter(node.depth, text);
        if (node.depth === 1) firstH1 ??= text;
        out.add(text, path);
        return;
      }
      case "paragraph":
        out.add(inline(node.children), path);
        return;
      case "code":
        out.add(node.value, path);
        return;
      case "list":
        out.add(listText(node), path);
        return;
      case "blockquote":
        for (const child of node.children) block(child);
        return;
      default:
        // toml front matter, raw HTML, thematic breaks, link definitions: markup, not prose.
        return;
    }
  };
  for (const node of tree.children) block(node);
  return out.finish({ title: title ?? firstH1 });
}

/** The words of inline content as a reader sees them: no link targets, no emphasis marks. */
function inline(nodes: PhrasingContent[]): string {
  let s = "";
  for (const n of nodes) {
    if (n.type === "text" || n.type === "inlineCode") s += n.value;
    else if (n.type === "break") s += "\n";
    else if (n.type === "image" || n.type === "imageReference") s += n.alt ?? "";
    else if ("children" in n) s += inline(n.children);
  }
  return s;
}

/** A list as one block, one item per line (nested items follow their parent's line). */
function listText(list: List): string {
  const lines: string[] = [];
  list.children.forEach((item, i) => {
    const marker = list.ordered ? `${(list.start ?? 1) + i}. ` : "";
    const parts: string[] = [];
    for (const child of item.children) {
      if (child.type === "paragraph" || child.type === "heading")
        parts.push(inline(child.children));
      else if (child.type === "code") parts.push(child.value);
      else if (child.type === "list") parts.push(listText(child));
    }
    lines.push(marker + parts.join("\n"));
  });
  return lines.join("\n");
}

function frontMatterTitle(yaml: string): string | undefined {
  try {
    const data: unknown = parseYaml(yaml);
    if (data && typeof data === "object" && "title" in data) {
      const title = (data as { title: unknown }).title;
      if (typeof title === "string" && title.trim()) return title;
    }
  } catch {
    // Broken front matter costs the title, not the document.
  }
  return undefined;
}
