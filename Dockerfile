# sidecar-proxy: built with the dev dependencies (TypeScript), run with the production ones only,
# as a non-root user, on an image with no shell and no package manager. The build runs the same
# `npm ci` as CI (its "prepare" script compiles src/ to dist/).
#
#   docker build -t sidecar-proxy .
#   docker run --rm -p 8443:8443 sidecar-proxy --upstream http://host.docker.internal:8080
FROM node:24-bookworm-slim AS build
WORKDIR /build
COPY package.json package-lock.json tsconfig.json ./
COPY src ./src
RUN npm ci --no-audit --no-fund && npm prune --omit=dev --no-audit --no-fund

FROM gcr.io/distroless/nodejs24-debian12:nonroot
WORKDIR /app
COPY --from=build /build/package.json ./
COPY --from=build /build/node_modules ./node_modules
COPY --from=build /build/dist ./dist
# the example app of k8s/ and the pod simulation, runnable from this image
COPY examples ./examples
ENV NODE_ENV=production
# glibc keeps freed memory at the top of a thread's malloc arena once its dynamic threshold has
# grown past it: in one start in three, 10 MiB that a start-up thread freed stayed resident for
# the process's life. A fixed threshold hands it back (docs/performance.md, "Memory"); the
# benchmark runs every Node target with this file's ENV lines.
ENV MALLOC_TRIM_THRESHOLD_=131072
USER 65532:65532
EXPOSE 8443 9901
ENTRYPOINT ["/nodejs/bin/node", "/app/dist/main.js"]
