/**
 * A deterministic evaluation corpus for comparing search modes (vector, keyword, hybrid).
 *
 * Two kinds of query, chosen to show where each mode is strong:
 * - "paraphrase": a question reworded so that it shares no content word with the passage that
 *   answers it (checked by scripts/search-corpus-check.ts). Meaning-based search should find
 *   these; keyword search has little to go on.
 * - "exact": a product code, a person's name or a rare term/id plus a generic phrase, asked of
 *   documents that are near-identical except for that exact term. Keyword search should find
 *   these; a sentence embedding sees almost the same text each time.
 *
 * Filler documents make the ranking non-trivial. Everything is fixed text or seeded, so every
 * run sees the same corpus.
 */
import { generatedPassages } from "./corpus.js";

export interface EvalDocument {
  id: string;
  text: string;
  metadata: { kind: "topic" | "product" | "person" | "term" | "filler"; category?: string };
}

export interface EvalQuery {
  kind: "paraphrase" | "exact";
  query: string;
  /** The id of the document that answers the query. */
  expect: string;
}

/** One passage per subject, and a question a user might type for it in other words. */
const TOPIC_PASSAGES: { id: string; category: string; text: string; question: string }[] = [
  {
    id: "sourdough",
    category: "cooking",
    text: "Feed the sourdough starter with equal weights of flour and water each day, and bake the loaf once the dough has doubled in size.",
    question: "how do I keep a wild yeast culture alive for homemade bread",
  },
  {
    id: "risotto",
    category: "cooking",
    text: "Stir the rice constantly while adding warm stock a ladle at a time, so the grains release their starch and turn creamy.",
    question: "technique for a velvety Italian arborio dish",
  },
  {
    id: "coffee",
    category: "cooking",
    text: "Grind the beans just before brewing and pour water just off the boil over the grounds for a richer cup of coffee.",
    question: "how to get more flavour out of my morning java",
  },
  {
    id: "wine",
    category: "cooking",
    text: "Red wine is fermented with the grape skins, which give it colour and tannins, while white wine is usually pressed first.",
    question: "why are some vintages darker than others",
  },
  {
    id: "eclipse",
    category: "astronomy",
    text: "During a total solar eclipse the Moon passes directly between Earth and the Sun, briefly turning daytime into darkness.",
    question: "why does the sky go black at noon when our satellite blocks sunlight",
  },
  {
    id: "black-hole",
    category: "astronomy",
    text: "A black hole forms when a massive star collapses under its own gravity, creating a region from which not even light can escape.",
    question: "what happens when a giant dying sun implodes into something nothing can flee",
  },
  {
    id: "exoplanets",
    category: "astronomy",
    text: "Astronomers detect planets around distant stars by measuring the tiny dip in brightness as each world crosses in front of its sun.",
    question: "spotting faraway orbiting bodies by watching starlight dim slightly",
  },
  {
    id: "index-funds",
    category: "finance",
    text: "Index funds track a broad market benchmark, charge very low fees, and usually beat actively managed portfolios over the long run.",
    question: "cheap passive investing that follows the whole stock exchange",
  },
  {
    id: "compound-interest",
    category: "finance",
    text: "Money left in a savings account grows faster each year because the interest earned is added to the balance and earns interest itself.",
    question: "why deposits snowball when returns are reinvested",
  },
  {
    id: "budgeting",
    category: "finance",
    text: "Write down every expense for a month, sort the spending into needs and wants, then set a limit for each category.",
    question: "how to keep tabs on where my salary goes so I can save",
  },
  {
    id: "freelance-tax",
    category: "finance",
    text: "Self-employed workers must pay income tax in instalments and should put aside part of every invoice for the bill.",
    question: "freelancers saving for what they owe the government",
  },
  {
    id: "marathon",
    category: "sport",
    text: "Runners preparing for a marathon gradually lengthen their weekly long run and taper their training in the final three weeks before race day.",
    question: "how should I build up mileage for a 42 kilometre road event",
  },
  {
    id: "tennis",
    category: "sport",
    text: "She won the tennis final in straight sets, serving a string of aces and breaking her opponent twice in the deciding set.",
    question: "a dominant racquet champion clinched the trophy easily",
  },
  {
    id: "basketball",
    category: "sport",
    text: "The point guard sank a three-pointer at the buzzer, giving the home side a one-point victory in the playoff game.",
    question: "a last-second long shot decided the hoops match",
  },
  {
    id: "skiing",
    category: "sport",
    text: "Beginners learning to ski should keep their weight forward and use a snowplough shape to control speed on gentle slopes.",
    question: "advice for first-timers on the snowy pistes",
  },
  {
    id: "chess",
    category: "games",
    text: "In chess, castling moves the king two squares toward a rook and jumps the rook to the other side, tucking the king into safety.",
    question: "protecting the monarch early in a board game of strategy",
  },
  {
    id: "diabetes",
    category: "medicine",
    text: "People with type 2 diabetes can often lower their blood sugar through regular exercise, a balanced diet and, if needed, medication.",
    question: "managing glucose levels when the body resists insulin",
  },
  {
    id: "antibiotics",
    category: "medicine",
    text: "Antibiotics kill bacteria but do nothing against viruses, so they will not cure a common cold or the flu.",
    question: "can penicillin treat a runny nose",
  },
  {
    id: "sleep",
    category: "medicine",
    text: "Adults need seven to nine hours of sleep a night, and keeping a regular bedtime helps the body's internal clock.",
    question: "how much slumber do grown-ups require",
  },
  {
    id: "dental",
    category: "medicine",
    text: "Brush your teeth twice a day with fluoride toothpaste and floss daily to prevent cavities and gum disease.",
    question: "oral hygiene habits that stop decay",
  },
  {
    id: "tomatoes",
    category: "gardening",
    text: "Plant tomato seedlings in full sun after the last frost, water them deeply at the base, and tie the stems to stakes as they grow.",
    question: "raising juicy red salad fruit outdoors from young starts",
  },
  {
    id: "compost",
    category: "gardening",
    text: "Mix kitchen scraps with dry leaves in a compost heap and turn it every few weeks so it breaks down into rich soil.",
    question: "recycling food waste into garden fertiliser",
  },
  {
    id: "roses",
    category: "gardening",
    text: "Prune rose bushes in late winter, cutting just above an outward-facing bud and removing any dead or crossing canes.",
    question: "the right season to trim thorny flowering shrubs",
  },
  {
    id: "contract",
    category: "law",
    text: "A contract is only binding when there is an offer, an acceptance, and something of value exchanged between the parties.",
    question: "what makes an agreement legally enforceable",
  },
  {
    id: "tenancy",
    category: "law",
    text: "A landlord must usually give written notice before entering a rented flat, except in an emergency such as a burst pipe.",
    question: "can the property owner come into my apartment without warning",
  },
  {
    id: "copyright",
    category: "law",
    text: "Copyright protects an author's original work automatically from the moment it is created, without any need to register it.",
    question: "do novelists have to file paperwork before their writing is legally theirs",
  },
  {
    id: "jazz",
    category: "music",
    text: "Jazz musicians often improvise solos over a chord progression, inventing new melodies on the spot while the rhythm section keeps time.",
    question: "spontaneous playing in swing and bebop bands",
  },
  {
    id: "symphony",
    category: "music",
    text: "The conductor raised her baton and the violins, cellos and brass of the symphony began the opening movement together.",
    question: "a maestro cueing an orchestra to start a classical concert",
  },
  {
    id: "piano",
    category: "music",
    text: "Practising scales slowly with a metronome builds finger strength and evenness before attempting fast pieces on the piano.",
    question: "exercises to improve keyboard technique",
  },
  {
    id: "photosynthesis",
    category: "biology",
    text: "Plants use sunlight, water and carbon dioxide to produce sugar and release oxygen through their leaves.",
    question: "how greenery makes food from light and air",
  },
  {
    id: "honeybees",
    category: "biology",
    text: "Honeybees communicate the location of flowers to the rest of the hive by performing a waggle dance.",
    question: "how insects tell each other where nectar is",
  },
  {
    id: "whales",
    category: "biology",
    text: "Humpback whales migrate thousands of kilometres each year between cold feeding waters and warm tropical breeding grounds.",
    question: "seasonal journeys of huge ocean mammals",
  },
  {
    id: "earthquake",
    category: "geology",
    text: "An earthquake happens when stress builds along a fault and the rock suddenly slips, sending seismic waves through the ground.",
    question: "why does the earth shake",
  },
  {
    id: "volcano",
    category: "geology",
    text: "Lava poured from the erupting volcano overnight, and villages on its slopes were evacuated before dawn.",
    question: "residents fled as magma flowed down the mountain",
  },
  {
    id: "glaciers",
    category: "climate",
    text: "Glaciers in the Alps are shrinking rapidly as summers grow warmer, exposing bare rock where thick ice stood a century ago.",
    question: "frozen rivers in European peaks retreating due to global heating",
  },
  {
    id: "hurricanes",
    category: "climate",
    text: "Hurricanes form over warm ocean water, drawing energy from evaporation and spinning because of the Earth's rotation.",
    question: "what fuels tropical cyclones",
  },
  {
    id: "roman-roads",
    category: "history",
    text: "The Roman Empire built thousands of kilometres of paved roads so that legions and traders could cross its provinces quickly.",
    question: "ancient Italian highways for soldiers and merchants",
  },
  {
    id: "printing-press",
    category: "history",
    text: "Gutenberg's printing press, with its movable metal type, made books far cheaper and helped spread literacy across Europe.",
    question: "the fifteenth-century invention that let ordinary people afford reading material",
  },
  {
    id: "pyramids",
    category: "history",
    text: "The pyramids of Giza were built as tombs for the pharaohs, using millions of limestone blocks hauled into place by workers.",
    question: "burial monuments of ancient Egyptian kings",
  },
  {
    id: "uninitialised-variable",
    category: "programming",
    text: "The program crashed because a variable was read before it was assigned; giving it a default value fixed the bug.",
    question: "my script dies because something is used before it gets initialised",
  },
  {
    id: "database-index",
    category: "programming",
    text: "Adding an index to the column used in the WHERE clause lets the database find matching rows without scanning the whole table.",
    question: "speeding up slow SQL lookups",
  },
  {
    id: "passwords",
    category: "security",
    text: "Use a long, unique password for every account and turn on two-factor authentication so a stolen login cannot be reused elsewhere.",
    question: "keeping online profiles safe from hackers",
  },
  {
    id: "cat",
    category: "pets",
    text: "Our cat sleeps all afternoon on the windowsill, curled up in the warm sunshine.",
    question: "a kitten napping in a sunny spot by the glass",
  },
  {
    id: "puppy",
    category: "pets",
    text: "Reward the puppy with a treat the moment it sits, and keep training sessions short so it stays focused.",
    question: "teaching a young dog to obey commands",
  },
  {
    id: "aquarium",
    category: "pets",
    text: "Change a quarter of the aquarium water every week and test the ammonia level so the fish stay healthy.",
    question: "maintaining a home tank for pet goldfish",
  },
  {
    id: "sleeper-train",
    category: "travel",
    text: "The overnight sleeper train leaves the capital at ten and arrives by the coast just after breakfast.",
    question: "a nighttime railway journey to the seaside",
  },
  {
    id: "jet-lag",
    category: "travel",
    text: "Flying east across several time zones causes jet lag, so travellers should shift their bedtime gradually and seek morning daylight.",
    question: "beating tiredness after a long-haul flight overseas",
  },
  {
    id: "solar-panels",
    category: "energy",
    text: "Rooftop solar panels convert sunlight into electricity, and any surplus power can be sold back to the grid.",
    question: "making your own household energy from the sky",
  },
  {
    id: "electric-cars",
    category: "energy",
    text: "Electric cars have no tailpipe emissions and are cheapest to charge overnight at home on an off-peak tariff.",
    question: "running costs of battery vehicles",
  },
  {
    id: "knitting",
    category: "crafts",
    text: "Cast on sixty stitches with a thick wool yarn and knit every row to make a simple scarf.",
    question: "a beginner project with needles",
  },
  {
    id: "meditation",
    category: "wellbeing",
    text: "Sit comfortably, close your eyes and focus on slow breaths, gently returning attention whenever the mind wanders.",
    question: "a simple mindfulness exercise for calm",
  },
];

/**
 * Product families: within a family every description is the same template, differing only in
 * the model code and one minor attribute. Codes repeat across families by number ("XK-4410",
 * "XR-4410") so the number alone does not identify a product.
 */
const PRODUCT_FAMILIES: {
  category: string;
  template: (code: string, attribute: string) => string;
  models: { code: string; attribute: string; query: string }[];
}[] = [
  {
    category: "headphones",
    template: (code, colour) =>
      `The ${code} wireless over-ear headphones offer thirty hours of battery life, active noise cancelling and a folding headband. This model comes in ${colour}.`,
    models: [
      { code: "XK-4410", attribute: "matte black", query: "XK-4410 spec sheet" },
      { code: "XK-4417", attribute: "silver grey", query: "XK-4417 spec sheet" },
      { code: "XK-4423", attribute: "navy blue", query: "XK-4423 datasheet" },
      { code: "XK-4429", attribute: "chalk white", query: "XK-4429 specs" },
      { code: "XK-4435", attribute: "forest green", query: "XK-4435 user guide" },
    ],
  },
  {
    category: "headphones",
    template: (code, hours) =>
      `The ${code} wireless over-ear headphones offer ${hours} hours of battery life, active noise cancelling and a folding headband. This model comes in matte black.`,
    models: [
      { code: "XR-4410", attribute: "twenty", query: "XR-4410 spec sheet" },
      { code: "XR-4417", attribute: "twenty-four", query: "XR-4417 datasheet" },
      { code: "XR-4426", attribute: "thirty-two", query: "XR-4426 specs" },
      { code: "XR-4438", attribute: "forty", query: "XR-4438 product page" },
    ],
  },
  {
    category: "power-tools",
    template: (code, torque) =>
      `The ${code} cordless drill driver has a brushless motor, two speed settings and ${torque} newton metres of torque. It ships with two batteries and a charger.`,
    models: [
      { code: "QV-208A", attribute: "forty", query: "QV-208A spec sheet" },
      { code: "QV-208B", attribute: "fifty", query: "QV-208B datasheet" },
      { code: "QV-208C", attribute: "sixty", query: "QV-208C specs" },
      { code: "QV-208D", attribute: "sixty-five", query: "QV-208D user guide" },
      { code: "QV-208E", attribute: "seventy", query: "QV-208E product page" },
    ],
  },
  {
    category: "networking",
    template: (code, ports) =>
      `The ${code} dual-band wifi router supports mesh networking, WPA3 encryption and parental controls, with ${ports} gigabit ethernet ports on the back.`,
    models: [
      { code: "NX-7100", attribute: "two", query: "NX-7100 spec sheet" },
      { code: "NX-7150", attribute: "three", query: "NX-7150 datasheet" },
      { code: "NX-7200", attribute: "four", query: "NX-7200 specs" },
      { code: "NX-7250", attribute: "eight", query: "NX-7250 user guide" },
    ],
  },
  {
    category: "monitors",
    template: (code, refresh) =>
      `The ${code} is a 27 inch IPS monitor with a 1440p panel, a ${refresh} hertz refresh rate and a height-adjustable stand with USB-C charging.`,
    models: [
      { code: "HD-2719", attribute: "75", query: "HD-2719 spec sheet" },
      { code: "HD-2724", attribute: "100", query: "HD-2724 datasheet" },
      { code: "HD-2732", attribute: "144", query: "HD-2732 specs" },
      { code: "HD-2740", attribute: "165", query: "HD-2740 product page" },
    ],
  },
];

/**
 * Bios of people in similar roles: the unusual full name is what tells them apart. As in any
 * large organisation, some names look alike (a shared first name or surname, a near-identical
 * spelling), so only the full name identifies the person.
 */
const PEOPLE: { name: string; team: string; project: string }[] = [
  { name: "Ingrid Falkenrath", team: "payments", project: "the fraud scoring service" },
  { name: "Ingrid Falkenhayn", team: "payments", project: "the refunds pipeline" },
  { name: "Ingrun Falkenrath", team: "payments", project: "the invoice export tool" },
  { name: "Zbigniew Wróblewski", team: "payments", project: "the currency conversion service" },
  { name: "Zbigniew Wróbel", team: "payments", project: "the chargeback dashboard" },
  { name: "Zdzisław Wróblewski", team: "payments", project: "the settlement reports" },
  { name: "Eero Paasikivi", team: "payments", project: "the payout scheduler" },
  { name: "Eero Paasilinna", team: "billing", project: "the subscription renewals job" },
  { name: "Yevgenia Dolgorukova", team: "billing", project: "the tax calculation module" },
  { name: "Yevgenia Dolgova", team: "billing", project: "the dunning emails" },
  { name: "Kasimir Trautwein", team: "billing", project: "the usage metering service" },
  { name: "Kasimir Trautmann", team: "billing", project: "the pricing rules engine" },
  { name: "Cosimo Barbarigo", team: "billing", project: "the receipts archive" },
  { name: "Cosima Barbarigo", team: "billing", project: "the discount codes service" },
];

/**
 * Rare tokens (error codes, ticket ids, genes, chemicals), each in a sentence that is the same
 * for its group except for the token, and the generic word a user would add to it.
 */
const RARE_TERM_GROUPS: {
  category: string;
  template: (token: string) => string;
  terms: { token: string; query: string }[];
}[] = [
  {
    category: "incident",
    template: (t) =>
      `The nightly export job failed again, and the on-call engineer traced the outage to ${t} before restarting the service.`,
    terms: [
      { token: "ERR_0x7F3A", query: "ERR_0x7F3A fix" },
      { token: "ERR_0x7E3A", query: "ERR_0x7E3A fix" },
      { token: "INC-20931", query: "INC-20931 status" },
      { token: "INC-20913", query: "INC-20913 status" },
      { token: "INC-29031", query: "INC-29031 postmortem" },
      { token: "CVE-2023-44487", query: "CVE-2023-44487 mitigation" },
    ],
  },
  {
    category: "genetics",
    template: (t) =>
      `The lab report for the patient noted a variant in the ${t} gene and recommended a follow-up screening within six months.`,
    terms: [
      { token: "BRCA1", query: "BRCA1 result" },
      { token: "BRCA2", query: "BRCA2 result" },
      { token: "TP53", query: "TP53 findings" },
      { token: "TP63", query: "TP63 variant" },
    ],
  },
  {
    category: "chemical",
    template: (t) =>
      `The safety data sheet from the cleaning supplier lists ${t} as a hazardous ingredient that must be kept away from heat.`,
    terms: [
      { token: "trichloroethylene", query: "trichloroethylene handling" },
      { token: "tetrachloroethylene", query: "tetrachloroethylene precautions" },
      { token: "trichloromethane", query: "trichloromethane exposure" },
      { token: "dichloromethane", query: "dichloromethane storage" },
    ],
  },
];

/** Filler: seeded one-to-three-sentence passages on unrelated civic news. */
function fillerPassages(count: number): string[] {
  const out: string[] = [];
  const seen = new Set<string>();
  for (let seed = 4242; out.length < count; seed++) {
    for (const p of generatedPassages(50, 80, 400, seed)) {
      // Keep whole sentences only, at most three, and at most 400 characters.
      const sentences = (p.match(/[^.]+\./g) ?? []).map((s) => s.trim());
      let text = "";
      for (const s of sentences.slice(0, 3)) {
        const next = text ? `${text} ${s}` : s;
        if (next.length > 400) break;
        text = next;
      }
      if (!text || seen.has(text)) continue;
      seen.add(text);
      out.push(text);
      if (out.length === count) break;
    }
  }
  return out;
}

const slug = (s: string) =>
  s
    .normalize("NFKD")
    .replace(/\p{M}+/gu, "")
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, "-")
    .replace(/^-|-$/g, "");

/** The corpus: documents (topics, products, people, rare terms, filler) and queries. */
export function searchCorpus(): { documents: EvalDocument[]; queries: EvalQuery[] } {
  const documents: EvalDocument[] = [];
  const queries: EvalQuery[] = [];

  for (const t of TOPIC_PASSAGES) {
    const id = `topic:${t.id}`;
    documents.push({ id, text: t.text, metadata: { kind: "topic", category: t.category } });
    queries.push({ kind: "paraphrase", query: t.question, expect: id });
  }
  for (const family of PRODUCT_FAMILIES) {
    for (const m of family.models) {
      const id = `product:${m.code}`;
      documents.push({
        id,
        text: family.template(m.code, m.attribute),
        metadata: { kind: "product", category: family.category },
      });
      queries.push({ kind: "exact", query: m.query, expect: id });
    }
  }
  for (const p of PEOPLE) {
    const id = `person:${slug(p.name)}`;
    documents.push({
      id,
      text: `${p.name} is a senior backend engineer on the ${p.team} team who, over the last two years, worked on ${p.project}.`,
      metadata: { kind: "person", category: p.team },
    });
    queries.push({ kind: "exact", query: `what did ${p.name} work on`, expect: id });
  }
  for (const group of RARE_TERM_GROUPS) {
    for (const t of group.terms) {
      const id = `term:${slug(t.token)}`;
      documents.push({
        id,
        text: group.template(t.token),
        metadata: { kind: "term", category: group.category },
      });
      queries.push({ kind: "exact", query: t.query, expect: id });
    }
  }
  fillerPassages(100).forEach((text, i) => {
    documents.push({
      id: `filler:${String(i + 1).padStart(3, "0")}`,
      text,
      metadata: { kind: "filler" },
    });
  });
  return { documents, queries };
}
