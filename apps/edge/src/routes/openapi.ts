import { ErrorBody } from "@p2pa/shared";
import { z } from "zod";

/** A JSON response of the OpenAPI document. */
export const json = <T extends z.ZodType>(schema: T, description: string) => ({
  description,
  content: { "application/json": { schema } },
});

/** The error responses every authenticated route can give. */
export const errors = {
  401: json(ErrorBody, "Missing, invalid, revoked or expired credentials"),
  403: json(ErrorBody, "The key lacks the route's scope"),
  404: json(
    ErrorBody,
    "Not found (or another tenant's); `model_not_found` for a model this deployment does not serve, with `details.available`",
  ),
  422: json(ErrorBody, "Invalid request"),
  429: json(ErrorBody, "A rate limit or quota is reached; see Retry-After"),
};

/** `{id}` in a path. */
export const IdParam = z.object({ id: z.string().min(1).max(64) });
