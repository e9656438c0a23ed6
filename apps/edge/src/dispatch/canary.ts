import { cosine } from "@p2pa/shared";
import { migrateOnce } from "../lib/do-schema.js";

/**
 * Known-answer checks. Now and then a task goes out with one extra item: a canary, a public
 * sentence (never a tenant's text) with a chunk id shaped like its neighbours', so a worker
 * cannot tell it from real work. Once two different donors have given a canary the same
 * vector, that vector is its known answer; a donor that later answers a known canary wrongly
 * is caught for certain, even if it agrees with itself across sessions or colludes on real
 * tasks. Until a canary's answer is known, answers are kept as candidates.
 */
export const CANARY_TEXTS: readonly string[] = [
  "The river rose overnight after three days of heavy rain in the hills.",
  "A new bakery opened on the corner and sells bread until late in the evening.",
  "The committee postponed its decision on the bridge until the spring meeting.",
  "Researchers found that the old lighthouse still guides a few fishing boats home.",
  "Our neighbour repaired the fence and painted it a pale shade of green.",
  "The museum will show maps of the coastline drawn two hundred years ago.",
  "She learned to play the cello during a long winter in the mountains.",
  "The train to the coast leaves every hour and stops at four small towns.",
  "Farmers planted barley early this year because the soil warmed quickly.",
  "A storm knocked out power to several streets near the harbour last night.",
  "The library extended its opening hours for students during the exam season.",
  "He keeps a notebook of birds he has seen on his morning walks.",
  "The city plans to plant trees along the avenue to cool it in summer.",
  "Volunteers cleaned the beach and collected bags of plastic and rope.",
  "The recipe calls for two cups of flour, a pinch of salt and warm water.",
  "The small theatre sold every ticket for the opening night of the play.",
  "Engineers tested the new pump before the dry season began.",
  "The orchestra rehearsed the symphony twice before the concert on Sunday.",
  "A cat slept in the window of the bookshop all afternoon.",
  "The school garden grows tomatoes, beans and a few sunflowers.",
  "Hikers were advised to carry water because the trail has no springs.",
  "The ferry was delayed by fog but arrived safely before noon.",
  "The old mill was turned into a workshop for local carpenters.",
  "Children built a snowman in the square after the first snowfall.",
  "The council voted to repair the roof of the community hall.",
  "A quiet café near the station serves soup and fresh bread at lunch.",
  "The market sells apples from orchards in the valley every Saturday.",
  "The team practised passing drills in the rain before the final.",
  "The observatory opened its telescope to visitors on clear evenings.",
  "A local author read from her new novel at the town library.",
  "Workers resurfaced the road, and traffic moves faster now.",
  "The garden club swaps seeds and cuttings every spring.",
];

export type CanaryVerdict = "pass" | "fail" | "unknown";

export class Canaries {
  constructor(
    private readonly sql: SqlStorage,
    private readonly agreeCosine: number,
    private readonly random: () => number = Math.random,
  ) {}

  /** Creates the tables and the pool; run once under blockConcurrencyWhile. */
  migrate(): void {
    migrateOnce(this.sql, "canaries", [
      `
      CREATE TABLE IF NOT EXISTS canaries (
        id INTEGER PRIMARY KEY,
        text TEXT NOT NULL,
        -- the known answer (packed float32), once two donors agreed on it
        vector BLOB
      );
      CREATE TABLE IF NOT EXISTS canary_answers (
        canary_id INTEGER NOT NULL,
        donor TEXT NOT NULL,
        vector BLOB NOT NULL,
        PRIMARY KEY (canary_id, donor)
      );
    `,
    ]);
    CANARY_TEXTS.forEach((text, id) => {
      this.sql.exec("INSERT OR IGNORE INTO canaries (id, text) VALUES (?, ?)", id, text);
    });
  }

  /** One canary of the pool, at random. */
  pick(): { id: number; text: string } | null {
    const pool = this.sql
      .exec<{ id: number; text: string }>("SELECT id, text FROM canaries")
      .toArray();
    return pool[Math.floor(this.random() * pool.length)] ?? null;
  }

  /**
   * Judges a donor's answer for a canary: against its known answer, or, while none is known,
   * against other donors' answers (two that agree make it known).
   */
  judge(canaryId: number, donor: string, vector: Float32Array): CanaryVerdict {
    const row = this.sql
      .exec<{ vector: ArrayBuffer | null }>("SELECT vector FROM canaries WHERE id = ?", canaryId)
      .toArray()[0];
    if (!row) return "unknown";
    if (row.vector)
      return cosine(new Float32Array(row.vector), vector) >= this.agreeCosine ? "pass" : "fail";
    const others = this.sql
      .exec<{ donor: string; vector: ArrayBuffer }>(
        "SELECT donor, vector FROM canary_answers WHERE canary_id = ? AND donor != ?",
        canaryId,
        donor,
      )
      .toArray();
    const packed = new Float32Array(vector).buffer;
    if (others.some((o) => cosine(new Float32Array(o.vector), vector) >= this.agreeCosine)) {
      this.sql.exec("UPDATE canaries SET vector = ? WHERE id = ?", packed, canaryId);
      this.sql.exec("DELETE FROM canary_answers WHERE canary_id = ?", canaryId);
      return "pass";
    }
    this.sql.exec(
      "INSERT OR REPLACE INTO canary_answers (canary_id, donor, vector) VALUES (?, ?, ?)",
      canaryId,
      donor,
      packed,
    );
    return "unknown";
  }

  /** A quarantined donor's pending answers no longer count. */
  forgetDonor(donor: string): void {
    this.sql.exec("DELETE FROM canary_answers WHERE donor = ?", donor);
  }
}

/**
 * A chunk id for a canary placed after `neighbour`: the next chunk of the same document, so
 * it looks like its neighbours (`<job>.<document>.<chunk>`).
 */
export function canaryChunkId(neighbour: string): string {
  const m = neighbour.match(/^(.*)\.(\d{5})$/);
  if (!m) return `${neighbour}.00001`;
  return `${m[1]}.${String(Number(m[2]) + 1).padStart(5, "0")}`;
}
