// Vite import suffixes the edge tests use to read test/fixtures/documents inside workerd
// (the pool runs tests through Vite, and workerd has no host file system):
// `?raw` gives a text file's contents, `?url&inline` a binary file as a base64 data URL.
declare module "*?raw" {
  const content: string;
  export default content;
}
declare module "*?url&inline" {
  const dataUrl: string;
  export default dataUrl;
}
