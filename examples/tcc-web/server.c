/* A small web app in C, run by the tcc of its slug (`tcc -run`): it answers every
   request on $PORT with the dyno's name and the first line of the request; for
   `GET /sleep/N` it first sleeps N seconds (to see the router's H12 timeout). */
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(void) {
    const char *port = getenv("PORT") ? getenv("PORT") : "5000";
    const char *dyno = getenv("DYNO") ? getenv("DYNO") : "?";
    struct sockaddr_in addr;
    int one = 1, server = socket(AF_INET, SOCK_STREAM, 0);

    setsockopt(server, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons(atoi(port));
    if (bind(server, (struct sockaddr *)&addr, sizeof addr) || listen(server, 64)) {
        perror("tcc-web: listen");
        return 1;
    }
    printf("tcc-web: listening on %s\n", port);
    fflush(stdout);
    for (;;) {
        char request[4096], body[512], head[256];
        int client = accept(server, NULL, NULL);
        ssize_t got;
        if (client < 0)
            continue;
        got = read(client, request, sizeof request - 1);
        request[got > 0 ? got : 0] = 0;
        request[strcspn(request, "\r\n")] = 0;
        if (strncmp(request, "GET /sleep/", 11) == 0)
            sleep(atoi(request + 11));
        snprintf(body, sizeof body, "Hello from tcc %d on %s: %s\n", __TINYC__, dyno, request);
        snprintf(head, sizeof head,
                 "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                 "Connection: close\r\n\r\n", strlen(body));
        write(client, head, strlen(head));
        write(client, body, strlen(body));
        close(client);
    }
}
