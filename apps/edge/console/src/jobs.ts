import type { components, JobRecord } from "@p2pa/shared/client";

/** Shapes and helpers about jobs that several pages share. */
export type Job = JobRecord;
export type IngestReport = components["schemas"]["IngestReport"];
export type SubmittedJob = Job & { ingest?: IngestReport };

/** A job that may still change: its page and row follow the live stream. */
export const isActive = (status: Job["status"]) => status === "queued" || status === "running";

export const jobHref = (id: string) => `#/jobs/${encodeURIComponent(id)}`;

export const documentHref = (id: string, collection?: string) =>
  `#/documents/${encodeURIComponent(id)}${collection ? `/${encodeURIComponent(collection)}` : ""}`;
