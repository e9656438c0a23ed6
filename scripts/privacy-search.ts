/**
 * `npx tsx scripts/privacy-search.ts`: what masking personal data costs search. ~300 short
 * documents full of personal data (support tickets, emails, invoices, HR notes) on 60
 * subjects, and one paraphrased query per subject that contains no personal data. The
 * documents are embedded (a) as written and (b) masked as the edge masks them before a
 * volunteer sees them, with the real model in-process; queries are embedded as written.
 *
 * Reports, for (a) and (b): recall@1 and recall@5 (share of a query's relevant documents in
 * the top k, out of min(k, relevant)), and MRR (reciprocal rank of the first relevant one).
 * With 60 queries one corpus moves these by a few points either way, so the figures are
 * means over several corpora (`--seeds`, default 5) that differ in wording and personal data.
 * Writes bench-results/privacy-search.json.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { maskPersonalData, PII_KINDS, type PiiKind } from "../apps/edge/src/privacy/mask.js";
import { NAMES, PII_GENERATORS, Rand } from "../apps/edge/test/privacy/corpus.js";
import { loadModel } from "../apps/worker-node/src/model/index.js";
import { ROOT } from "./lib/local-edge.js";

type DocKind = "ticket" | "email" | "invoice" | "hr";

/** A subject: three ways a document may describe it, and a query that paraphrases it. */
interface Subject {
  id: string;
  kind: DocKind;
  query: string;
  says: [string, string, string];
}

const SUBJECTS: Subject[] = [
  // Support tickets
  {
    id: "blender",
    kind: "ticket",
    query: "customer asking for a refund on a broken blender",
    says: [
      "The blender I bought stopped working after two days and the motor smells burnt.",
      "My kitchen blender cracked at the base the first time I used it; I would like my money back.",
      "The jug of the blender leaks and the blades no longer spin. Please refund me.",
    ],
  },
  {
    id: "sofa",
    kind: "ticket",
    query: "couch delivery is weeks late",
    says: [
      "My sofa was supposed to arrive three weeks ago and nobody has delivered it.",
      "Still waiting for the corner sofa I ordered; the delivery date keeps moving.",
      "The furniture van never came with my settee, and the tracking has not changed.",
    ],
  },
  {
    id: "double-charge",
    kind: "ticket",
    query: "billed twice for the same monthly plan",
    says: [
      "I was charged two times for my subscription this month.",
      "Your system took the monthly fee twice from my account.",
      "There are two identical payments for my membership on my statement.",
    ],
  },
  {
    id: "reset-mail",
    kind: "ticket",
    query: "password reset message never arrives",
    says: [
      "I asked to reset my password but the email with the link never comes.",
      "The password recovery mail does not arrive, not even in spam.",
      "I cannot log in because the reset link is never sent to me.",
    ],
  },
  {
    id: "shoes",
    kind: "ticket",
    query: "exchange footwear for a bigger size",
    says: [
      "The running shoes are too small; can I swap them for a size 44?",
      "I need to exchange the boots for one size larger.",
      "The trainers pinch my toes, please send a bigger pair instead.",
    ],
  },
  {
    id: "parcel",
    kind: "ticket",
    query: "package arrived crushed and the contents broken",
    says: [
      "The box was smashed when it arrived and the glasses inside are broken.",
      "My parcel came torn open and the vase was shattered.",
      "The courier delivered a crushed package; half of the plates are in pieces.",
    ],
  },
  {
    id: "gym",
    kind: "ticket",
    query: "want to end my fitness club contract",
    says: [
      "Please cancel my gym membership from next month.",
      "I am moving away and need to terminate my fitness studio contract.",
      "How do I stop my membership at the sports club? I no longer train there.",
    ],
  },
  {
    id: "laptop-heat",
    kind: "ticket",
    query: "notebook computer gets very hot and shuts down",
    says: [
      "My laptop overheats and switches itself off after ten minutes.",
      "The notebook fan is loud and the machine becomes too hot to touch.",
      "The computer shuts down when it gets warm, even with nothing open.",
    ],
  },
  {
    id: "washer",
    kind: "ticket",
    query: "washing machine leaking water on the floor",
    says: [
      "The washing machine leaves a puddle under it after every cycle.",
      "Water runs out of the front door of my washer onto the kitchen floor.",
      "My new washing machine is leaking from the bottom during the spin.",
    ],
  },
  {
    id: "router",
    kind: "ticket",
    query: "home internet keeps disconnecting",
    says: [
      "The wifi router drops the connection every evening.",
      "My broadband goes offline several times an hour.",
      "The internet connection at home cuts out constantly since the update.",
    ],
  },
  {
    id: "tv-sound",
    kind: "ticket",
    query: "television has a picture but no audio",
    says: [
      "The TV shows the picture but there is no sound at all.",
      "My television went silent; the speakers do not work on any channel.",
      "No audio from the new TV, the image is fine.",
    ],
  },
  {
    id: "coffee",
    kind: "ticket",
    query: "espresso machine needs descaling and tastes bitter",
    says: [
      "The coffee machine shows the descale light and the espresso tastes bitter.",
      "How do I remove limescale from my espresso maker?",
      "My coffee maker is clogged with scale and drips slowly.",
    ],
  },
  {
    id: "luggage",
    kind: "ticket",
    query: "airline lost my suitcase",
    says: [
      "My suitcase did not arrive on the flight from Madrid.",
      "The airline has lost my checked bag and nobody answers.",
      "My luggage is missing since I landed two days ago.",
    ],
  },
  {
    id: "flight-delay",
    kind: "ticket",
    query: "compensation for a plane that left five hours late",
    says: [
      "My flight was delayed by five hours and I want compensation.",
      "The plane departed very late and I missed my connection; I claim a payment.",
      "We waited all night at the gate; the airline owes us money for the delay.",
    ],
  },
  {
    id: "hotel-cancel",
    kind: "ticket",
    query: "cancel a hotel reservation and get the deposit back",
    says: [
      "I need to cancel my hotel booking and get my deposit refunded.",
      "Please cancel the room reservation for next week and return the prepayment.",
      "We cannot travel; cancel our stay at the hotel and refund the advance.",
    ],
  },
  {
    id: "car-claim",
    kind: "ticket",
    query: "insurance claim after a road accident",
    says: [
      "I want to file a claim for the damage to my car after the crash.",
      "Someone drove into my vehicle at a junction; how do I claim on my policy?",
      "My car was hit in the parking lot and the bumper is destroyed; opening a claim.",
    ],
  },
  {
    id: "energy-bill",
    kind: "ticket",
    query: "electricity bill much higher than usual",
    says: [
      "My power bill doubled this month although we used less.",
      "The electricity invoice is far too high; the meter reading must be wrong.",
      "Why is my energy bill three times the normal amount?",
    ],
  },
  {
    id: "app-crash",
    kind: "ticket",
    query: "mobile app closes as soon as it opens",
    says: [
      "The app crashes immediately when I start it on my phone.",
      "Since the last update the application closes right after the splash screen.",
      "Your app keeps quitting on launch; I reinstalled it twice.",
    ],
  },
  {
    id: "order-wrong",
    kind: "ticket",
    query: "received a different item than the one ordered",
    says: [
      "I ordered a blue jacket but received a red scarf.",
      "The wrong product was in my package, not what I bought.",
      "You sent me a toaster instead of the kettle I ordered.",
    ],
  },
  {
    id: "account-locked",
    kind: "ticket",
    query: "cannot sign in because the account is blocked",
    says: [
      "My account is locked after too many login attempts.",
      "I am blocked from signing in and the unlock does not work.",
      "The website says my profile is suspended and I cannot log in.",
    ],
  },
  {
    id: "heating",
    kind: "ticket",
    query: "radiators cold and boiler not working",
    says: [
      "The heating in my flat has not worked since Monday; the radiators are cold.",
      "Our boiler broke down and there is no hot water or heat.",
      "The central heating stopped and the apartment is freezing.",
    ],
  },
  {
    id: "noise",
    kind: "ticket",
    query: "complaint about loud neighbours at night",
    says: [
      "The neighbours play loud music every night until 3 am.",
      "I want to complain about the noise from the flat above mine.",
      "There are parties next door every weekend and we cannot sleep.",
    ],
  },
  {
    id: "mortgage",
    kind: "ticket",
    query: "ask the bank to pause home loan repayments",
    says: [
      "Can I take a payment holiday on my mortgage for three months?",
      "I lost my job and need to suspend the house loan instalments.",
      "Please defer my mortgage repayments while I am on unpaid leave.",
    ],
  },
  {
    id: "printer",
    kind: "ticket",
    query: "printer jams paper every time",
    says: [
      "The printer jams on every page and makes a grinding noise.",
      "Paper keeps getting stuck in the office printer.",
      "My printer pulls several sheets at once and then jams.",
    ],
  },
  {
    id: "bike",
    kind: "ticket",
    query: "bicycle brakes squeal and do not stop well",
    says: [
      "The brakes on my new bike squeak and barely slow me down.",
      "My bicycle's disc brakes are noisy and weak.",
      "The e-bike brakes grind and I do not feel safe riding it.",
    ],
  },
  // Emails
  {
    id: "reschedule",
    kind: "email",
    query: "moving our meeting to another day",
    says: [
      "Could we move Thursday's meeting to Friday afternoon?",
      "Something came up; can we reschedule our call to next week?",
      "I need to postpone our appointment, would Monday work instead?",
    ],
  },
  {
    id: "kickoff",
    kind: "email",
    query: "invitation to the first meeting of a new project",
    says: [
      "You are invited to the kickoff of the website redesign project.",
      "Let's start the new project with a launch meeting on Tuesday.",
      "Join us for the project start session where we plan the first phase.",
    ],
  },
  {
    id: "speaker",
    kind: "email",
    query: "asking someone to give a talk at a conference",
    says: [
      "We would love you to speak at our conference in October.",
      "Would you give a keynote at the developer summit?",
      "Our event committee invites you to present a talk on machine learning.",
    ],
  },
  {
    id: "contract-renewal",
    kind: "email",
    query: "negotiating the renewal terms of a supplier agreement",
    says: [
      "Our contract ends in June; we would like to discuss renewal terms.",
      "Before we renew the service agreement we need a better price.",
      "Let's negotiate the extension of our supply contract for two more years.",
    ],
  },
  {
    id: "job-offer",
    kind: "email",
    query: "company offering a candidate a position",
    says: [
      "We are pleased to offer you the position of data analyst.",
      "Congratulations, we would like you to join our team as a designer.",
      "Following your interviews, we are making you an offer for the engineering role.",
    ],
  },
  {
    id: "rejection",
    kind: "email",
    query: "applicant was not selected for the role",
    says: [
      "Thank you for applying; unfortunately we chose another candidate.",
      "We regret to inform you that your application was not successful.",
      "After careful review we will not move forward with your application.",
    ],
  },
  {
    id: "newsletter",
    kind: "email",
    query: "please stop sending me marketing emails",
    says: [
      "Please remove me from your mailing list.",
      "I want to unsubscribe from the newsletter, I get too many emails.",
      "Stop sending me promotional messages.",
    ],
  },
  {
    id: "wedding",
    kind: "email",
    query: "invitation to a marriage celebration",
    says: [
      "We are getting married and would love you to join the celebration.",
      "You are invited to our wedding in the countryside next summer.",
      "Save the date: our wedding party is on the fifth of July.",
    ],
  },
  {
    id: "thanks",
    kind: "email",
    query: "thank you note after a job interview",
    says: [
      "Thank you for taking the time to interview me yesterday.",
      "I appreciated our conversation about the role and remain very interested.",
      "Many thanks for meeting me; I enjoyed learning about your team.",
    ],
  },
  {
    id: "lease",
    kind: "email",
    query: "tenant giving notice to leave the apartment",
    says: [
      "I am writing to give notice that I will move out of the flat at the end of March.",
      "This is my notice to end the rental agreement for the apartment.",
      "We will vacate the house next month and terminate the lease.",
    ],
  },
  {
    id: "school-trip",
    kind: "email",
    query: "permission for a child to go on a class excursion",
    says: [
      "I give permission for my son to join the class trip to the museum.",
      "Please find my consent for my daughter's school excursion.",
      "Our child may take part in the field trip on Friday.",
    ],
  },
  {
    id: "vet",
    kind: "email",
    query: "booking an appointment for a sick dog",
    says: [
      "My dog has been vomiting; can we book a visit with the vet?",
      "I need an appointment for my puppy, he is not eating.",
      "Our dog is limping badly and needs to see the veterinarian.",
    ],
  },
  {
    id: "tax",
    kind: "email",
    query: "question about filing the annual tax return",
    says: [
      "I have a question about my income tax declaration for last year.",
      "Which documents do I need to submit my yearly tax return?",
      "Can the accountant help me file my taxes before the deadline?",
    ],
  },
  {
    id: "donation",
    kind: "email",
    query: "thanks for a gift to a charity",
    says: [
      "Thank you for your generous donation to the food bank.",
      "Your contribution helps us shelter homeless families this winter.",
      "We are grateful for your gift to the children's hospital fund.",
    ],
  },
  {
    id: "event-cancel",
    kind: "email",
    query: "event called off because of bad weather",
    says: [
      "The outdoor concert is cancelled due to the storm warning.",
      "Because of heavy snow we have called off Saturday's fair.",
      "The festival will not take place; the forecast is too dangerous.",
    ],
  },
  // Invoices
  {
    id: "consulting",
    kind: "invoice",
    query: "bill for advisory services in March",
    says: [
      "Invoice for consulting services provided in March: 12 days of strategy work.",
      "Advisory fees for the March engagement, billed at the agreed day rate.",
      "Professional services rendered in March for the market study.",
    ],
  },
  {
    id: "furniture",
    kind: "invoice",
    query: "purchase of desks and chairs for the office",
    says: [
      "Invoice for 20 office desks and 20 ergonomic chairs.",
      "Office furniture delivered: standing desks, chairs and cabinets.",
      "Supply of workstations and seating for the new office floor.",
    ],
  },
  {
    id: "licenses",
    kind: "invoice",
    query: "renewal of software subscriptions for the team",
    says: [
      "Annual renewal of 50 software licences for the design team.",
      "Subscription fees for the productivity suite, 12 months.",
      "Licence renewal for the accounting software, all seats.",
    ],
  },
  {
    id: "catering",
    kind: "invoice",
    query: "food and drinks for a conference",
    says: [
      "Catering for the conference: lunch and coffee breaks for 120 guests.",
      "Invoice for buffet, drinks and snacks served at the annual summit.",
      "Meals and refreshments for two days of the company event.",
    ],
  },
  {
    id: "hosting",
    kind: "invoice",
    query: "monthly cloud server charges",
    says: [
      "Cloud hosting charges for virtual machines and storage in May.",
      "Invoice for server instances, bandwidth and backups this month.",
      "Monthly bill for compute and database hosting.",
    ],
  },
  {
    id: "toner",
    kind: "invoice",
    query: "printer ink and paper supplies",
    says: [
      "Invoice for toner cartridges and ten boxes of paper.",
      "Office supplies: printer ink, staples and copy paper.",
      "Replacement toner for the laser printers on floor two.",
    ],
  },
  {
    id: "legal",
    kind: "invoice",
    query: "lawyer fees for contract review",
    says: [
      "Legal fees for reviewing the distribution agreement.",
      "Invoice from the law firm for contract drafting and advice.",
      "Attorney services: review of the lease and negotiation support.",
    ],
  },
  {
    id: "design",
    kind: "invoice",
    query: "freelancer bill for a new logo",
    says: [
      "Invoice for logo design and brand guidelines.",
      "Freelance graphic design: new logo, icons and colour palette.",
      "Design work for the corporate identity and business cards.",
    ],
  },
  {
    id: "translation",
    kind: "invoice",
    query: "translating documents into German",
    says: [
      "Translation of the user manual from English into German, 14,000 words.",
      "Invoice for translating the website into German.",
      "German translation of the contract and the product brochure.",
    ],
  },
  {
    id: "fleet",
    kind: "invoice",
    query: "servicing of company vehicles",
    says: [
      "Maintenance of the company car fleet: oil changes and new tyres.",
      "Invoice for servicing six delivery vans.",
      "Repairs and inspection for the vehicles of the sales team.",
    ],
  },
  // HR notes
  {
    id: "parental",
    kind: "hr",
    query: "employee requesting time off after having a baby",
    says: [
      "Employee requests six months of parental leave starting in May.",
      "She is expecting a baby and applied for maternity leave.",
      "He asked for paternity leave after the birth of his daughter.",
    ],
  },
  {
    id: "raise",
    kind: "hr",
    query: "staff member asking for higher pay",
    says: [
      "The employee asked for a salary increase after taking on team lead duties.",
      "Discussion about a pay rise during the annual review.",
      "She requested a raise, citing market rates for her role.",
    ],
  },
  {
    id: "sick",
    kind: "hr",
    query: "extending medical absence",
    says: [
      "Sick leave extended by two weeks on the doctor's advice.",
      "The employee remains ill and submitted a new medical certificate.",
      "Absence due to illness continues until the end of the month.",
    ],
  },
  {
    id: "remote",
    kind: "hr",
    query: "request to work from home permanently",
    says: [
      "Employee asks to work remotely full time after moving to the coast.",
      "Request for a permanent home office arrangement.",
      "He wants to switch to remote work four days a week.",
    ],
  },
  {
    id: "performance",
    kind: "hr",
    query: "concerns about an employee's results",
    says: [
      "Manager raised concerns about missed deadlines and quality of work.",
      "Performance improvement plan agreed for the next quarter.",
      "The review noted repeated errors and low output.",
    ],
  },
  {
    id: "resignation",
    kind: "hr",
    query: "worker handing in notice to quit",
    says: [
      "The employee resigned and will leave after a one-month notice period.",
      "Resignation letter received; last working day is 30 June.",
      "She has decided to quit and join another company.",
    ],
  },
  {
    id: "relocation",
    kind: "hr",
    query: "moving allowance for transferring to another city",
    says: [
      "Relocation package approved for the move to the Berlin office.",
      "The company will cover moving costs for the transfer to Lyon.",
      "Relocation allowance for the employee moving to the new site.",
    ],
  },
  {
    id: "harassment",
    kind: "hr",
    query: "report of bullying at work",
    says: [
      "Complaint of harassment by a colleague filed with HR.",
      "The employee reported repeated bullying from a team member.",
      "Formal grievance about inappropriate behaviour by a manager.",
    ],
  },
  {
    id: "training",
    kind: "hr",
    query: "approval of a course budget",
    says: [
      "Training budget approved for a cloud certification course.",
      "Request to attend a leadership workshop, costs covered by the company.",
      "The employee may enrol in the language course at company expense.",
    ],
  },
  {
    id: "overtime",
    kind: "hr",
    query: "dispute over unpaid extra hours",
    says: [
      "The employee says 40 hours of overtime were not paid.",
      "Disagreement about overtime compensation for the release weekend.",
      "Extra hours worked in March are missing from the payslip.",
    ],
  },
];

const LAST = [
  "Lopez",
  "Smith",
  "Dubois",
  "Keller",
  "Murphy",
  "Mensah",
  "Chen",
  "Silva",
  "Berg",
  "Nowak",
];

/** Every personal value planted in the document being written, to check none survives. */
let planted: string[] = [];
function pii(r: Rand, kind: PiiKind): string {
  const value = PII_GENERATORS[kind](r);
  planted.push(value);
  return value;
}

/** A document of the subject's kind, with personal data where such documents carry it. */
function documentFor(s: Subject, r: Rand, variant: number): string {
  const name = `${r.pick(NAMES)} ${r.pick(LAST)}`;
  const body = s.says[variant % 3] as string;
  switch (s.kind) {
    case "ticket":
      return r.pick([
        () => `Ticket from ${pii(r, "email")}: ${body} Call me on ${pii(r, "phone")}.`,
        () => `${body} Order paid with card ${pii(r, "card")}. ${name}, ${pii(r, "phone")}`,
        () => `Customer ${name} <${pii(r, "email")}> writes: ${body} Logged from ${pii(r, "ip")}.`,
        () => `${body} Please refund to ${pii(r, "iban")}. Contact ${pii(r, "email")}.`,
        () => `Support case: ${body} Photos at ${pii(r, "secret_url")}`,
      ])();
    case "email":
      return r.pick([
        () =>
          `From: ${name} <${pii(r, "email")}>\nTo: ${pii(r, "email")}\n\n${body}\n\nBest, ${name}\n${pii(r, "phone")}`,
        () => `Hi, ${body} You can reach me at ${pii(r, "phone")} or ${pii(r, "email")}. ${name}`,
        () => `${body} The shared folder is ${pii(r, "secret_url")} — ${name}, ${pii(r, "email")}`,
      ])();
    case "invoice":
      return r.pick([
        () =>
          `Invoice INV-${r.int(1000, 9999)} to ${name}. ${body} Pay to IBAN ${pii(r, "iban")} within 30 days. Questions: ${pii(r, "email")}`,
        () =>
          `${body} Total €${r.int(200, 9000)}.00, charged to card ${pii(r, "card")}. Billing contact ${pii(r, "phone")}.`,
        () => `Billed to ${name}, ${pii(r, "email")}. ${body} Download: ${pii(r, "secret_url")}`,
      ])();
    case "hr":
      return r.pick([
        () =>
          `HR note on ${name} (SSN ${pii(r, "ssn")}): ${body} Reach them at ${pii(r, "phone")}.`,
        () => `${body} Employee ${name}, ${pii(r, "email")}, salary account ${pii(r, "iban")}.`,
        () => `Case for ${name}, SSN ${pii(r, "ssn")}: ${body} VPN logins from ${pii(r, "ip")}.`,
      ])();
  }
}

interface Doc {
  subject: string;
  text: string;
  personal: string[];
}

function corpus(seed: number): Doc[] {
  const r = new Rand(seed);
  const docs: Doc[] = [];
  for (const s of SUBJECTS)
    for (let v = 0; v < 5; v++) {
      planted = [];
      const text = documentFor(s, r, v);
      docs.push({ subject: s.id, text, personal: planted });
    }
  // Shuffle, so rank ties do not favour the subject order.
  for (let i = docs.length - 1; i > 0; i--) {
    const j = r.int(0, i);
    [docs[i], docs[j]] = [docs[j] as Doc, docs[i] as Doc];
  }
  return docs;
}

function dot(a: Float32Array, b: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (a[i] as number) * (b[i] as number);
  return s;
}

interface Quality {
  recallAt1: number;
  recallAt5: number;
  mrr: number;
}

function quality(docs: Doc[], docVecs: Float32Array[], queryVecs: Float32Array[]): Quality {
  let r1 = 0;
  let r5 = 0;
  let mrr = 0;
  SUBJECTS.forEach((s, qi) => {
    const q = queryVecs[qi] as Float32Array;
    const ranked = docVecs
      .map((v, i) => ({ i, score: dot(q, v) }))
      .sort((a, b) => b.score - a.score)
      .map((x) => docs[x.i] as Doc);
    const relevant = docs.filter((d) => d.subject === s.id).length;
    const hits = (k: number) => ranked.slice(0, k).filter((d) => d.subject === s.id).length;
    r1 += hits(1) / Math.min(1, relevant);
    r5 += hits(5) / Math.min(5, relevant);
    const first = ranked.findIndex((d) => d.subject === s.id);
    mrr += first === -1 ? 0 : 1 / (first + 1);
  });
  const n = SUBJECTS.length;
  return { recallAt1: r1 / n, recallAt5: r5 / n, mrr: mrr / n };
}

const { values } = parseArgs({ options: { seeds: { type: "string", default: "5" } } });
const seeds = Array.from({ length: Number(values.seeds) }, (_, i) => 20260415 + i);

const embedder = await loadModel("use-lite", {
  cacheDir: path.join(ROOT, ".cache", "models"),
  threads: 1,
});
const tooLong = (texts: string[]) =>
  texts.filter((t) => embedder.countTokens(t) > embedder.manifest.maxTokens).length;
async function embedAll(texts: string[]): Promise<Float32Array[]> {
  const out: Float32Array[] = [];
  for (let i = 0; i < texts.length; i += 32)
    out.push(...(await embedder.embed(texts.slice(i, i + 32))));
  return out;
}
const queries = SUBJECTS.map((s) => s.query);
const queryVecs = await embedAll(queries);

/** One corpus (the documents' wording and personal data differ by seed), both ways. */
async function run(seed: number) {
  const docs = corpus(seed);
  const masked = docs.map((d) => maskPersonalData(d.text, PII_KINDS));
  const found: Partial<Record<PiiKind, number>> = {};
  for (const m of masked)
    for (const [k, n] of Object.entries(m.found))
      found[k as PiiKind] = (found[k as PiiKind] ?? 0) + n;
  const planted = docs.reduce((n, d) => n + d.personal.length, 0);
  const leaked = docs.flatMap((d, i) =>
    d.personal.filter((v) => (masked[i] as { text: string }).text.includes(v)),
  );
  const maskedDocs = docs.map((d, i) => ({ ...d, text: (masked[i] as { text: string }).text }));
  return {
    seed,
    found,
    planted,
    leaked,
    truncated: {
      asWritten: tooLong(docs.map((d) => d.text)),
      masked: tooLong(maskedDocs.map((d) => d.text)),
    },
    asWritten: quality(docs, await embedAll(docs.map((d) => d.text)), queryVecs),
    masked: quality(maskedDocs, await embedAll(maskedDocs.map((d) => d.text)), queryVecs),
    example: { asWritten: docs[0]?.text, masked: maskedDocs[0]?.text },
  };
}
const runs: Awaited<ReturnType<typeof run>>[] = [];
for (const seed of seeds) runs.push(await run(seed));
await embedder.dispose();

const mean = (pick: (r: (typeof runs)[number]) => number) =>
  runs.reduce((s, r) => s + pick(r), 0) / runs.length;
const summary = (which: "asWritten" | "masked"): Quality => ({
  recallAt1: mean((r) => r[which].recallAt1),
  recallAt5: mean((r) => r[which].recallAt5),
  mrr: mean((r) => r[which].mrr),
});
const a = summary("asWritten");
const b = summary("masked");
const f = (x: number) => x.toFixed(3);
const d = (x: number) => `${x >= 0 ? "+" : ""}${x.toFixed(3)}`;
const leaked = runs.flatMap((r) => r.leaked);
const plantedTotal = runs.reduce((n, r) => n + r.planted, 0);
console.log(
  [
    `${SUBJECTS.length * 5} documents (${SUBJECTS.length} subjects x 5) per corpus, ${seeds.length} corpora (seeds ${seeds[0]}..${seeds[seeds.length - 1]}), ${queries.length} queries, model use-lite`,
    `planted personal items still visible after masking: ${leaked.length} of ${plantedTotal}${leaked.length ? ` (${leaked.slice(0, 5).join(" | ")})` : ""}`,
    `documents over the model's ${embedder.manifest.maxTokens} tokens, all corpora: (a) ${runs.reduce((n, r) => n + r.truncated.asWritten, 0)}, (b) ${runs.reduce((n, r) => n + r.truncated.masked, 0)}`,
    "",
    "per corpus (a) / (b):",
    ...runs.map(
      (r) =>
        `  seed ${r.seed}: R@1 ${f(r.asWritten.recallAt1)} / ${f(r.masked.recallAt1)}  R@5 ${f(r.asWritten.recallAt5)} / ${f(r.masked.recallAt5)}  MRR ${f(r.asWritten.mrr)} / ${f(r.masked.mrr)}`,
    ),
    "",
    `| documents (mean of ${seeds.length} corpora) | recall@1 | recall@5 | MRR |`,
    "| --- | ---: | ---: | ---: |",
    `| (a) as written | ${f(a.recallAt1)} | ${f(a.recallAt5)} | ${f(a.mrr)} |`,
    `| (b) masked | ${f(b.recallAt1)} | ${f(b.recallAt5)} | ${f(b.mrr)} |`,
    `| (b) - (a) | ${d(b.recallAt1 - a.recallAt1)} | ${d(b.recallAt5 - a.recallAt5)} | ${d(b.mrr - a.mrr)} |`,
  ].join("\n"),
);

const result = {
  date: new Date().toISOString(),
  machine: { cpus: os.availableParallelism(), cpu: os.cpus()[0]?.model, node: process.version },
  model: "use-lite",
  documentsPerCorpus: SUBJECTS.length * 5,
  subjects: SUBJECTS.length,
  queries: queries.length,
  relevantPerQuery: 5,
  seeds,
  asWritten: a,
  masked: b,
  plantedItems: plantedTotal,
  leakedItems: leaked,
  runs,
};
mkdirSync(path.join(ROOT, "bench-results"), { recursive: true });
writeFileSync(
  path.join(ROOT, "bench-results", "privacy-search.json"),
  `${JSON.stringify(result, null, 2)}\n`,
);
console.log("\nwrote bench-results/privacy-search.json");
