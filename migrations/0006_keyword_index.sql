-- The keyword index of hybrid search (apps/edge/src/search/terms.ts). One entry per chunk,
-- rowid = keyword_rows.id. `terms` holds the chunk's words in order, each replaced by a keyed
-- hash under its tenant's key, so BM25 ranking and phrase positions work while the table holds
-- no document text. The hashes are lowercase hex, which the ascii tokenizer keeps whole.
CREATE VIRTUAL TABLE `chunk_terms` USING fts5(terms, tokenize = 'ascii');
